//! The config-error shape both services print (`file:line:column: key: what is wrong`, like
//! `nginx -t`) and the YAML reader that produces it.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_saphyr::Spanned;
use thiserror::Error;

/// A configuration problem, located as precisely as we can.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A problem at a known place.
    #[error("{file}:{line}:{column}: {message}")]
    At {
        /// The file.
        file: String,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
        /// What is wrong, starting with the key.
        message: String,
    },
    /// A problem with a whole file.
    #[error("{file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// A problem at the place `value` was written in `file`.
    pub fn at<T>(file: &str, value: &Spanned<T>, message: impl Into<String>) -> Self {
        ConfigError::At {
            file: file.to_string(),
            line: value.referenced.line(),
            column: value.referenced.column(),
            message: message.into(),
        }
    }
}

/// Reads and parses one YAML file; an empty file is `T::default()`.
pub fn read_yaml<T: DeserializeOwned + Default>(path: &Path) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse_yaml(&file, &text)
}

/// Parses YAML `text` read from `file`; an empty text is `T::default()`.
pub fn parse_yaml<T: DeserializeOwned + Default>(file: &str, text: &str) -> Result<T, ConfigError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let message = clean_message(&e.without_snippet().to_string());
        match e.location() {
            Some(l) => ConfigError::At {
                file: file.to_string(),
                line: l.line(),
                column: l.column(),
                message,
            },
            None => ConfigError::File {
                file: file.to_string(),
                message,
            },
        }
    })
}

/// The parser prefixes and suffixes its own location; we print the location ourselves.
fn clean_message(raw: &str) -> String {
    let mut message = raw.strip_prefix("error: ").unwrap_or(raw).to_string();
    if let Some(idx) = message.find(": ").filter(|_| message.starts_with("line ")) {
        message = message[idx + 2..].to_string();
    }
    if let Some(idx) = message.rfind(" at line ") {
        message.truncate(idx);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[allow(dead_code)]
        name: Option<Spanned<String>>,
    }

    #[test]
    fn unknown_key_is_located() {
        let e = parse_yaml::<Doc>("f.yaml", "name: a\nnmae: b\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("f.yaml:2:"), "{s}");
        assert!(s.contains("nmae"), "{s}");
        assert!(!s.contains("at line"), "{s}");
    }

    #[test]
    fn empty_file_is_default() {
        assert!(parse_yaml::<Doc>("f.yaml", "  \n").unwrap().name.is_none());
    }

    #[test]
    fn at_uses_the_value_position() {
        let d = parse_yaml::<Doc>("f.yaml", "\n\nname: x\n").unwrap();
        let e = ConfigError::at("f.yaml", d.name.as_ref().unwrap(), "name: bad");
        assert_eq!(e.to_string(), "f.yaml:3:7: name: bad");
    }
}
