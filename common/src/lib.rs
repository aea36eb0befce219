//! Config plumbing the gateway and the issuer share, so that their YAML files read alike:
//! one grammar for durations and one for sizes.

pub mod units;
