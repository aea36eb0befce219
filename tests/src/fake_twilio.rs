//! The test kit's fake Twilio ([`portcullis_testkit::fake_twilio`]), plus the client side of
//! its status callbacks, which answers with this harness's [`Resp`].

pub use portcullis_testkit::fake_twilio::*;

use crate::issuer::{send, Resp};

/// Posts a status callback to `post_to` the way Twilio would, signed for `signed_url` (the
/// URL Twilio was told, which is what the signature covers) with `auth_token`; `None` sends no
/// signature header.
pub fn post_status_callback(
    post_to: &str,
    signed_url: &str,
    auth_token: Option<&str>,
    params: &[(&str, &str)],
) -> Resp {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let mut req = crate::client()
        .post(post_to)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(token) = auth_token {
        req = req.header(
            "X-Twilio-Signature",
            twilio_signature(token, signed_url, params),
        );
    }
    send(req)
}
