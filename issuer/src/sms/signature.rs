//! Twilio's request signature (`X-Twilio-Signature`): base64 of HMAC-SHA1, keyed with the
//! account's auth token, over the full callback URL followed by every form parameter as
//! `name ‖ value`, sorted by name (then value). See
//! <https://www.twilio.com/docs/usage/webhooks/webhooks-security>.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The signature Twilio sends for a form POST of `params` to `url`.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    STANDARD.encode(hmac::sign(&key, &signed_bytes(url, params)).as_ref())
}

/// Whether `header` is the valid signature for `params` posted to `url`. The HMAC comparison
/// is constant-time (`hmac::verify`), so a forger learns nothing from response timing.
pub fn verify_twilio(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    let Ok(tag) = STANDARD.decode(header.trim()) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    hmac::verify(&key, &signed_bytes(url, params), &tag).is_ok()
}

fn signed_bytes(url: &str, params: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.as_bytes().to_vec();
    for (k, v) in sorted {
        data.extend_from_slice(k.as_bytes());
        data.extend_from_slice(v.as_bytes());
    }
    data
}

/// `sha256=<hex>` of HMAC-SHA256 over `timestamp ‖ "." ‖ body`: the header the generic
/// webhook provider sends (`X-Portcullis-Signature`), with the timestamp in
/// `X-Portcullis-Timestamp` so receivers can refuse replays.
pub fn webhook_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", crate::crypto::to_hex(ctx.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // The worked example of Twilio's request-validation documentation and SDK test suites.
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const SIG: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";

    fn documented() -> Vec<(String, String)> {
        // Deliberately not in sorted order.
        pairs(&[
            ("Digits", "1234"),
            ("To", "+18005551212"),
            ("From", "+14158675309"),
            ("Caller", "+14158675309"),
            ("CallSid", "CA1234567890ABCDE"),
        ])
    }

    #[test]
    fn matches_twilios_documented_example() {
        assert_eq!(twilio_signature("12345", URL, &documented()), SIG);
        assert!(verify_twilio("12345", URL, &documented(), SIG));
    }

    #[test]
    fn any_change_breaks_it() {
        let mut tampered = documented();
        tampered[0].1 = "9999".into();
        assert!(!verify_twilio("12345", URL, &tampered, SIG));
        assert!(!verify_twilio("54321", URL, &documented(), SIG));
        assert!(!verify_twilio(
            "12345",
            &format!("{URL}&x=1"),
            &documented(),
            SIG
        ));
        assert!(!verify_twilio("12345", URL, &documented(), ""));
        assert!(!verify_twilio("12345", URL, &documented(), "not base64 !"));
        assert!(!verify_twilio("12345", URL, &documented(), &SIG[..20]));
        let mut extra = documented();
        extra.push(("Extra".into(), String::new()));
        assert!(!verify_twilio("12345", URL, &extra, SIG));
    }

    #[test]
    fn webhook_signature_covers_timestamp_and_body() {
        let s = webhook_signature(b"k", 1, b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64, "{s}");
        assert_ne!(s, webhook_signature(b"k", 2, b"{}"));
        assert_ne!(s, webhook_signature(b"k", 1, b"{ }"));
        assert_ne!(s, webhook_signature(b"j", 1, b"{}"));
    }
}
