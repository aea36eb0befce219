//! Phone numbers: parsed with `phonenumber` (libphonenumber's metadata) and normalised to
//! E.164, so that every spelling of one number names one account.

use phonenumber::country::Id;
use phonenumber::Mode;

/// A valid phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone {
    /// E.164 form, e.g. `+12015550123`.
    pub e164: String,
    /// ISO 3166 alpha-2 region the number belongs to, e.g. `US`, when known.
    pub region: Option<String>,
}

/// Why a string is not a usable phone number (safe to show to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Empty, too long, or not a number at all.
    #[error("`phone` is not a phone number")]
    NotANumber,
    /// A national number without a region to read it in.
    #[error("`phone` has no country code: write it as +<country code><number> or give `region`")]
    NoRegion,
    /// The hint is not a region code.
    #[error("`region` must be an ISO 3166 alpha-2 code such as US or GB")]
    BadRegion,
    /// Parsed, but no such number exists in its country's numbering plan.
    #[error("`phone` is not a valid number for its country")]
    Invalid,
    /// Numbers with extensions cannot receive SMS.
    #[error("`phone` must not have an extension")]
    Extension,
}

/// The canonical upper-case region code, if `code` names one libphonenumber knows.
pub fn region(code: &str) -> Option<String> {
    let id: Id = code.trim().to_ascii_uppercase().parse().ok()?;
    Some(id.as_ref().to_string())
}

/// Parses `input` (international, or national with `region` as the hint) into a valid number.
pub fn parse(input: &str, region_hint: Option<&str>) -> Result<Phone, PhoneError> {
    let input = input.trim();
    if input.is_empty() || input.len() > 64 {
        return Err(PhoneError::NotANumber);
    }
    let hint = match region_hint {
        None => None,
        Some(r) => Some(
            r.trim()
                .to_ascii_uppercase()
                .parse::<Id>()
                .map_err(|_| PhoneError::BadRegion)?,
        ),
    };
    let international = input.starts_with('+');
    if hint.is_none() && !international {
        return Err(PhoneError::NoRegion);
    }
    // The parser has panicked on crafted input before (fuzzing found unwraps, since fixed):
    // whatever a caller sends must end as a 400, not a dropped connection.
    let parsed = std::panic::catch_unwind(|| {
        let number = phonenumber::parse(hint, input).map_err(|_| PhoneError::NotANumber)?;
        if number.extension().is_some() {
            return Err(PhoneError::Extension);
        }
        if !phonenumber::is_valid(&number) {
            return Err(PhoneError::Invalid);
        }
        Ok(number)
    });
    let number = parsed.map_err(|_| PhoneError::NotANumber)??;
    let e164 = number.format().mode(Mode::E164).to_string();
    let region = number.country().id().map(|id| id.as_ref().to_string());
    Ok(Phone { e164, region })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_and_international_forms_agree() {
        let a = parse("(201) 555-0123", Some("US")).unwrap();
        let b = parse("+1 201-555-0123", None).unwrap();
        let c = parse("+12015550123", Some("GB")).unwrap();
        assert_eq!(a.e164, "+12015550123");
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.region.as_deref(), Some("US"));
        let uk = parse("020 7946 0958", Some("gb")).unwrap();
        assert_eq!(uk.e164, "+442079460958");
        assert_eq!(uk.region.as_deref(), Some("GB"));
        // An international call prefix is read in the region it is dialled from.
        assert_eq!(parse("0044 20 7946 0958", Some("FR")).unwrap(), uk);
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        assert_eq!(parse("", None), Err(PhoneError::NotANumber));
        assert_eq!(parse("hello", Some("US")), Err(PhoneError::NotANumber));
        assert_eq!(parse("2015550123", None), Err(PhoneError::NoRegion));
        assert_eq!(
            parse("2015550123", Some("Mars")),
            Err(PhoneError::BadRegion)
        );
        assert!(parse("+1 555 0123", None).is_err());
        assert!(parse("+1 000 000 0000", None).is_err());
        assert!(parse("+1 123 456 7890", None).is_err());
        assert!(parse(&"1".repeat(100), Some("US")).is_err());
        assert_eq!(
            parse("+1 201-555-0123 ext. 12", None),
            Err(PhoneError::Extension)
        );
        // Inputs that made earlier versions of the parser panic.
        assert!(parse("  2 22#:", Some("US")).is_err());
        assert!(parse("+  2 22#:", None).is_err());
        assert!(parse("003-836-4618x3001", Some("CH")).is_err());
        for junk in ["+", "++1", "+1+1+1", "+\u{0}1", "+1 (((((", "tel:+1;ext=1"] {
            assert!(parse(junk, Some("US")).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn regions() {
        assert_eq!(region("us").as_deref(), Some("US"));
        assert_eq!(region("GB").as_deref(), Some("GB"));
        assert_eq!(region("XX"), None);
        assert_eq!(region(""), None);
    }
}
