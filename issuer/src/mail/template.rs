//! Message templates: text with `{link}`, `{email}` and `{minutes}` placeholders, checked
//! when the configuration loads so that a typo cannot surface as a broken mail later.

/// Placeholders a template may use.
pub const PLACEHOLDERS: [&str; 3] = ["link", "email", "minutes"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(&'static str),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Values substituted into a template.
#[derive(Clone, Copy, Debug)]
pub struct Values<'a> {
    /// The link with its token.
    pub link: &'a str,
    /// The recipient's address.
    pub email: &'a str,
    /// Minutes until the link expires.
    pub minutes: u64,
}

impl Template {
    /// Parses `text`; `{{` and `}}` stand for literal braces; an unknown or unclosed
    /// placeholder is an error naming it.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            lit.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("{{") {
                lit.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                lit.push('}');
                rest = after;
            } else if tail.starts_with('}') {
                return Err("unmatched `}` (write `}}` for a literal brace)".into());
            } else {
                let end = tail
                    .find('}')
                    .ok_or("unclosed `{` (write `{{` for a literal brace)")?;
                let name = &tail[1..end];
                let var = PLACEHOLDERS.iter().find(|p| **p == name).ok_or_else(|| {
                    format!(
                        "unknown placeholder {{{name}}}; use {}",
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    )
                })?;
                if !lit.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var(var));
                rest = &tail[end + 1..];
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template { parts })
    }

    /// Whether the template uses placeholder `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(v) if *v == name))
    }

    /// The text with the values filled in.
    pub fn render(&self, v: &Values<'_>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var("link") => out.push_str(v.link),
                Part::Var("email") => out.push_str(v.email),
                Part::Var(_) => out.push_str(&v.minutes.to_string()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Values<'static> = Values {
        link: "https://app/x?token=abc",
        email: "a@example.com",
        minutes: 60,
    };

    #[test]
    fn template_renders_placeholders_and_escapes() {
        let t = Template::parse("Hi {email}: {link} ({minutes} min) {{literal}}").unwrap();
        assert_eq!(
            t.render(&V),
            "Hi a@example.com: https://app/x?token=abc (60 min) {literal}"
        );
        assert!(t.uses("link") && t.uses("email") && t.uses("minutes"));
        let t = Template::parse("no placeholders").unwrap();
        assert_eq!(t.render(&V), "no placeholders");
        assert!(!t.uses("link"));
        assert_eq!(Template::parse("").unwrap().render(&V), "");
        assert_eq!(
            Template::parse("{link}{link}").unwrap().render(&V).len(),
            46
        );
    }

    #[test]
    fn template_errors_name_the_problem() {
        let e = Template::parse("Hello {name}").unwrap_err();
        assert!(e.contains("{name}") && e.contains("{link}"), "{e}");
        assert!(Template::parse("open {link")
            .unwrap_err()
            .contains("unclosed"));
        assert!(Template::parse("a } b").unwrap_err().contains("unmatched"));
        assert!(Template::parse("{}").unwrap_err().contains("unknown"));
    }
}
