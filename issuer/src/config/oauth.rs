//! The `oauth:` section of `config/issuer.yaml`: the first-party client's id.
//!
//! ```yaml
//! oauth:
//!   first_party_client_id: portcullis
//! ```

use serde::Deserialize;
use serde_saphyr::Spanned;

use portcullis_common::config::ConfigError;

/// The first-party client's id when the file does not set one.
pub const DEFAULT_FIRST_PARTY_CLIENT_ID: &str = "portcullis";

/// Longest first-party client id accepted.
const MAX_CLIENT_ID_LEN: usize = 64;

/// `oauth:` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthFile {
    first_party_client_id: Option<Spanned<String>>,
}

/// The validated `oauth:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// `client_id` of the first-party public client (no secret): the one password, SMS,
    /// anonymous and sign-up logins belong to, and the `client_id` claim of their tokens.
    pub first_party_client_id: String,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            first_party_client_id: DEFAULT_FIRST_PARTY_CLIENT_ID.into(),
        }
    }
}

impl OAuthFile {
    /// Validates the section read from `file`.
    pub(crate) fn compile(self, file: &str) -> Result<OAuthConfig, ConfigError> {
        let Some(id) = self.first_party_client_id else {
            return Ok(OAuthConfig::default());
        };
        // RFC 3986 unreserved characters only: the id then reads the same in a form body, in
        // HTTP Basic (where RFC 6749 §2.3.1 form-encodes it) and in a JWT claim.
        let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        if id.value.is_empty()
            || id.value.len() > MAX_CLIENT_ID_LEN
            || !id.value.chars().all(unreserved)
        {
            return Err(ConfigError::at(
                file,
                &id,
                format!(
                    "oauth.first_party_client_id: 1-{MAX_CLIENT_ID_LEN} characters of \
                     A-Z a-z 0-9 - . _ ~"
                ),
            ));
        }
        Ok(OAuthConfig {
            first_party_client_id: id.value,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_load as load;

    #[test]
    fn first_party_client_id_defaults_and_validates() {
        let c = load("").expect("empty config");
        assert_eq!(c.oauth.first_party_client_id, "portcullis");
        let c = load("oauth:\n  first_party_client_id: my-app.web_1~\n").expect("valid id");
        assert_eq!(c.oauth.first_party_client_id, "my-app.web_1~");
        for bad in ["\"\"", "\"a b\"", "\"a:b\"", "\"é\"", &"x".repeat(65)] {
            let e = load(&format!("oauth:\n  first_party_client_id: {bad}\n")).unwrap_err();
            assert!(
                e.contains(":2:") && e.contains("oauth.first_party_client_id"),
                "{bad}: {e}"
            );
        }
        let e = load("oauth:\n  client_id: x\n").unwrap_err();
        assert!(e.contains("client_id"), "{e}");
    }
}
