//! The issuer's duration grammar: the common one, in whole seconds.

use std::time::Duration;

/// The duration grammar both services share (`10s`, `15m`, `2h`, `7d`), in whole seconds:
/// token and session times are counted in seconds, so `1500ms` would silently lose half a second.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = portcullis_common::units::parse_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{:?}: use whole seconds", s.trim()));
    }
    Ok(d)
}
