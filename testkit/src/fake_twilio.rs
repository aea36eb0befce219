//! A fake Twilio on loopback: a real HTTP server speaking the Messages API
//! (`POST /2010-04-01/Accounts/{sid}/Messages.json`) the way Twilio does — basic auth with the
//! account SID and auth token, form fields `To`, `From` or `MessagingServiceSid`, `Body`,
//! `StatusCallback`, a 201 JSON answer carrying the message `sid`, Twilio's error documents
//! otherwise — that records every request and can be told to fail or to be slow.
//!
//! Any other path acts as a generic webhook receiver: the request is recorded and answered
//! `200 {"id": "hook-<n>"}` (or the configured failure).
//!
//! ```text
//! let tw = FakeTwilio::start("AC0123…", "token");
//! // sms.twilio.base_url: tw.base_url()
//! tw.fail_with(500);            // Twilio is down
//! tw.succeed();                 // Twilio is back
//! let code = tw.last_code("+12015550123");
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// A message Twilio accepted.
#[derive(Clone, Debug)]
pub struct TwilioMessage {
    /// The `sid` answered (`SM…`).
    pub sid: String,
    /// `To`.
    pub to: String,
    /// `From`, when sent.
    pub from: Option<String>,
    /// `MessagingServiceSid`, when sent.
    pub messaging_service_sid: Option<String>,
    /// `Body`.
    pub body: String,
    /// `StatusCallback`, when sent.
    pub status_callback: Option<String>,
}

/// A request as received (Twilio API calls and webhook deliveries alike).
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as form pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        form_pairs(&self.body)
    }

    /// The first run of 6–10 digits in the body (the code of an SMS), if any.
    pub fn code(&self) -> Option<String> {
        let text = match self.form().into_iter().find(|(k, _)| k == "Body") {
            Some((_, body)) => body,
            None => String::from_utf8_lossy(&self.body).into_owned(),
        };
        first_code(&text)
    }
}

/// The first run of 6–10 ASCII digits in `text`.
pub fn first_code(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| (6..=10).contains(&run.len()))
        .map(str::to_string)
}

struct State {
    account_sid: String,
    auth_token: String,
    /// `Some(status)`: answer every request with this status and Twilio's error document.
    failure: Option<u16>,
    delay: Duration,
    messages: Vec<TwilioMessage>,
    requests: Vec<Recorded>,
    next: u64,
}

/// The running fake; stopped on drop.
pub struct FakeTwilio {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeTwilio {
    /// Starts a fake accepting `account_sid` / `auth_token`.
    pub fn start(account_sid: &str, auth_token: &str) -> FakeTwilio {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake Twilio");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
            failure: None,
            delay: Duration::ZERO,
            messages: Vec::new(),
            requests: Vec::new(),
            next: 0,
        }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread =
            crate::spawn_server_thread(format!("fake-twilio-{}", addr.port()), move || {
                server::run(listener, st, stop_rx)
            });
        FakeTwilio {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `http://127.0.0.1:<port>`: the `base_url` to configure.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer every request with `status` (500, 429, 400…) and Twilio's error JSON.
    pub fn fail_with(&self, status: u16) {
        self.state().failure = Some(status);
    }

    /// Accept messages again.
    pub fn succeed(&self) {
        self.state().failure = None;
    }

    /// Wait this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> Vec<TwilioMessage> {
        self.state().messages.clone()
    }

    /// Messages accepted for `to`.
    pub fn messages_to(&self, to: &str) -> Vec<TwilioMessage> {
        self.messages().into_iter().filter(|m| m.to == to).collect()
    }

    /// Every request received, accepted or not.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// The code in the newest accepted message to `to`.
    pub fn last_code(&self, to: &str) -> Option<String> {
        self.messages_to(to)
            .last()
            .and_then(|m| first_code(&m.body))
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Twilio's `X-Twilio-Signature` for a form POST of `params` to `url`: base64 of
/// HMAC-SHA1(auth token, url ‖ sorted name‖value pairs). Written independently of the
/// issuer's implementation.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<&(&str, &str)> = params.iter().collect();
    sorted.sort();
    let mut data = String::from(url);
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    STANDARD.encode(hmac::sign(&key, data.as_bytes()).as_ref())
}

mod server {
    use super::{form_pairs, Recorded, State, TwilioMessage};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, StatusCode};
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    pub(super) async fn run(
        listener: std::net::TcpListener,
        state: Arc<Mutex<State>>,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        crate::serve_http1(listener, stop, move |req| handle(req, state.clone())).await
    }

    fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        resp
    }

    /// Twilio's error document.
    fn twilio_error(status: u16, code: u32, message: &str) -> Response<Full<Bytes>> {
        answer(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({
                "code": code,
                "message": message,
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                "status": status,
            }),
        )
    }

    async fn handle(
        req: Request<Incoming>,
        state: Arc<Mutex<State>>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (delay, resp) = {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.requests.push(Recorded {
                method: parts.method.to_string(),
                path: path.clone(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: body.clone(),
            });
            let resp = if let Some(status) = st.failure {
                let (code, message) = match status {
                    429 => (20429, "Too Many Requests"),
                    400 => (21211, "The 'To' number is not a valid phone number."),
                    401 => (20003, "Authenticate"),
                    _ => (20500, "An internal server error has occurred"),
                };
                twilio_error(status, code, message)
            } else if path.starts_with("/2010-04-01/") {
                twilio_api(
                    &mut st,
                    &parts.method,
                    &path,
                    &header("authorization"),
                    &header("content-type"),
                    &body,
                )
            } else {
                st.next += 1;
                answer(StatusCode::OK, json!({"id": format!("hook-{}", st.next)}))
            };
            (st.delay, resp)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(resp)
    }

    fn twilio_api(
        st: &mut State,
        method: &hyper::Method,
        path: &str,
        authorization: &str,
        content_type: &str,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let expected_path = format!("/2010-04-01/Accounts/{}/Messages.json", st.account_sid);
        let expected_auth = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", st.account_sid, st.auth_token))
        );
        if authorization != expected_auth {
            return twilio_error(401, 20003, "Authenticate");
        }
        if path != expected_path {
            return twilio_error(404, 20404, "The requested resource was not found");
        }
        if method != hyper::Method::POST {
            return twilio_error(405, 20004, "Method not allowed");
        }
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return twilio_error(400, 21601, "Body must be form-encoded");
        }
        let form = form_pairs(body);
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let Some(to) = get("To").filter(|t| t.starts_with('+')) else {
            return twilio_error(400, 21604, "A 'To' phone number is required.");
        };
        let Some(text) = get("Body").filter(|b| !b.is_empty()) else {
            return twilio_error(400, 21602, "Message body is required.");
        };
        let from = get("From");
        let mg = get("MessagingServiceSid");
        if from.is_some() == mg.is_some() {
            return twilio_error(
                400,
                21603,
                "A 'From' phone number or a 'MessagingServiceSid' is required.",
            );
        }
        st.next += 1;
        let sid = format!("SM{:032x}", u128::from(st.next) * 0x9e37_79b9_7f4a_7c15);
        st.messages.push(TwilioMessage {
            sid: sid.clone(),
            to: to.clone(),
            from: from.clone(),
            messaging_service_sid: mg.clone(),
            body: text.clone(),
            status_callback: get("StatusCallback"),
        });
        answer(
            StatusCode::CREATED,
            json!({
                "sid": sid,
                "account_sid": st.account_sid,
                "to": to,
                "from": from,
                "messaging_service_sid": mg,
                "body": text,
                "status": "queued",
                "num_segments": "1",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "error_code": null,
                "error_message": null,
                "uri": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", st.account_sid),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_helper_matches_twilios_documented_example() {
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ];
        assert_eq!(
            twilio_signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn codes_in_text() {
        assert_eq!(
            first_code("Your code is 012345. It expires in 5 min.").as_deref(),
            Some("012345")
        );
        assert_eq!(first_code("no code 12345"), None);
    }
}
