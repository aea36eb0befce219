//! End-to-end tests of SMS one-time-code login against the real issuer binary and a fake
//! Twilio on loopback (real HTTP, checking credentials and form fields), each scenario on
//! SQLite and on PostgreSQL: sign-up and log-in, code attempts, expiry and replacement, send
//! limits, number normalisation, the country allow-list, provider failures, the Twilio request
//! shape, the generic webhook provider, signed delivery reports, and test numbers.

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_tests::fake_twilio::{post_status_callback, FakeTwilio};
use portcullis_tests::issuer::*;
use portcullis_tests::on_both_backends;
use portcullis_tests::{client, tempdir};
use serde_json::{json, Value};

on_both_backends!(
    signup_then_login,
    wrong_code_limit,
    concurrent_wrong_guesses,
    expired_code,
    resend_cancels_previous,
    min_interval,
    send_budgets,
    verify_budget_per_ip,
    normalisation,
    country_allow_list_and_invalid_numbers,
    provider_down_then_back,
    provider_refusal_and_timeout,
    twilio_request_shape,
    webhook_provider,
    delivery_reports,
    identical_answers,
    test_numbers,
    signup_disabled,
);

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "fake-twilio-auth-token-0123456789";
/// The public URL Twilio is told (the issuer sits behind a gateway under another name).
const CALLBACK: &str = "https://issuer.example.com/auth/v1/webhooks/sms-status";
const PHONE: &str = "+12015550123";

struct Env {
    _dir: tempfile::TempDir,
    iss: IssuerProc,
    tw: FakeTwilio,
}

/// The `sms:` section for the fake Twilio; `extra` holds more `sms:` keys, two-space indented.
fn twilio_yaml(tw: &FakeTwilio, extra: &str) -> String {
    let timeout = if extra.contains("  timeout:") {
        ""
    } else {
        "  timeout: 2s\n"
    };
    format!(
        "sms:\n  provider: twilio\n  allowed_countries: [US, GB]\n{timeout}  retries: 1\n{extra}\
         \x20 twilio:\n    account_sid: {SID}\n    auth_token_file: twilio-token\n    \
         from: \"+15005550006\"\n    base_url: {}\n    status_callback: {CALLBACK}\n",
        tw.base_url()
    )
}

fn setup(b: Backend, extra: &str) -> Option<Env> {
    let db = db_kind(b)?;
    let dir = tempdir();
    std::fs::write(dir.path().join("twilio-token"), format!("{TOKEN}\n")).expect("token file");
    let tw = FakeTwilio::start(SID, TOKEN);
    // The tests play the gateway on loopback (see `start_from`).
    let yaml = twilio_yaml(&tw, extra) + "trusted_proxies: [127.0.0.1/32]\n";
    let iss = start_issuer(dir.path(), db, &yaml);
    Some(Env { _dir: dir, iss, tw })
}

impl Env {
    fn start(&self, phone: &str) -> Resp {
        post_json(
            &self.iss.url("/v1/auth/sms/start"),
            &json!({ "phone": phone }),
        )
    }

    fn start_body(&self, body: &Value) -> Resp {
        post_json(&self.iss.url("/v1/auth/sms/start"), body)
    }

    /// As if the gateway forwarded a request from `ip`: `X-Forwarded-For` from loopback,
    /// which [`setup`]'s issuer trusts.
    fn start_from(&self, phone: &str, ip: &str) -> Resp {
        send(
            client()
                .post(self.iss.url("/v1/auth/sms/start"))
                .header("X-Forwarded-For", ip)
                .json(&json!({ "phone": phone })),
        )
    }

    fn verify(&self, phone: &str, code: &str) -> Resp {
        post_json(
            &self.iss.url("/v1/auth/sms/verify"),
            &json!({ "phone": phone, "code": code }),
        )
    }

    /// The code of the newest SMS to `phone`; panics when none was sent.
    fn code(&self, phone: &str) -> String {
        self.tw
            .last_code(phone)
            .unwrap_or_else(|| panic!("no SMS with a code to {phone}: {:?}", self.tw.messages()))
    }

    fn sent_to(&self, phone: &str) -> usize {
        self.tw.messages_to(phone).len()
    }

    fn users(&self) -> Vec<Value> {
        let r = self.iss.admin_get("/admin/users");
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()["users"].as_array().expect("users").clone()
    }

    fn messages(&self, phone: &str) -> Vec<Value> {
        let r = self.iss.admin_get(&format!(
            "/admin/sms/messages?phone={}",
            phone.replace('+', "%2B")
        ));
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()["messages"].as_array().expect("messages").clone()
    }
}

/// A code that differs from `code` in its last digit.
fn wrong(code: &str) -> String {
    let mut b = code.as_bytes().to_vec();
    let last = b.len() - 1;
    b[last] = b'0' + (b[last] - b'0' + 1) % 10;
    String::from_utf8(b).expect("digits")
}

fn assert_bad_code(r: &Resp) {
    let v = r.assert_error(400, Some("invalid_grant"));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("code"),
        "{v}"
    );
}

fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"))
        .parse()
        .expect("Retry-After is seconds")
}

// ---------------------------------------------------------------------------------------------

fn signup_then_login(b: Backend) {
    let Some(env) = setup(b, "  min_interval: 0s\n") else {
        return;
    };
    assert!(env.users().is_empty());
    let r = env.start(PHONE);
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json()["status"], "sent");
    assert_eq!(r.json()["expires_in"], 300);
    let code = env.code(PHONE);
    assert_eq!(code.len(), 6, "default code length");
    let first = env.verify(PHONE, &code).pair();
    let claims = env.iss.verify(&first.access);
    assert_eq!(claims["amr"], json!(["sms"]), "{claims}");
    let sub = claims["sub"].as_str().expect("sub").to_string();
    // The account exists now: phone set, no email, no password.
    let me = env.iss.me(&first.access);
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json()["phone"], PHONE);
    assert_eq!(me.json()["email"], Value::Null);
    assert_eq!(env.users().len(), 1);
    // The code is single-use.
    assert_bad_code(&env.verify(PHONE, &code));
    // The refresh token works like any other, and carries the account's current roles.
    let r = env.iss.admin_patch(
        &format!("/admin/users/{sub}"),
        &json!({"roles": ["editor"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let refreshed = env.iss.refresh(&first.refresh).pair();
    assert_eq!(
        env.iss.verify(&refreshed.access)["roles"],
        json!(["editor"])
    );
    // Second login: same account.
    assert_eq!(env.start(PHONE).status, 202);
    let code2 = env.code(PHONE);
    let second = env.verify(PHONE, &code2).pair();
    let claims2 = env.iss.verify(&second.access);
    assert_eq!(claims2["sub"], sub.as_str());
    assert_eq!(claims2["amr"], json!(["sms"]));
    assert_ne!(claims2["sid"], claims["sid"], "a new session per login");
    assert_eq!(env.users().len(), 1, "no second account");
    let m = get_with(&env.iss.admin_url("/metrics"), None).text;
    assert!(
        m.contains("portcullis_issuer_sms_sends_total{outcome=\"sent\",provider=\"twilio\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_issuer_sms_verifications_total{outcome=\"ok\"} 2"),
        "{m}"
    );
}

fn wrong_code_limit(b: Backend) {
    let Some(env) = setup(b, "  min_interval: 0s\n") else {
        return;
    };
    assert_eq!(env.start(PHONE).status, 202);
    let code = env.code(PHONE);
    for _ in 0..5 {
        assert_bad_code(&env.verify(PHONE, &wrong(&code)));
    }
    // The code is dead: even the right one is refused, with the same answer.
    let dead = env.verify(PHONE, &code);
    assert_bad_code(&dead);
    assert_eq!(dead.text, env.verify(PHONE, &wrong(&code)).text);
    assert!(env.users().is_empty());
    // Four wrong guesses leave the fifth attempt to the right code.
    assert_eq!(env.start(PHONE).status, 202);
    let code = env.code(PHONE);
    for _ in 0..4 {
        assert_bad_code(&env.verify(PHONE, &wrong(&code)));
    }
    env.verify(PHONE, &code).pair();
}

fn concurrent_wrong_guesses(b: Backend) {
    let Some(env) = setup(b, "  max_attempts: 3\n") else {
        return;
    };
    assert_eq!(env.start(PHONE).status, 202);
    let code = env.code(PHONE);
    let bad = wrong(&code);
    let url = env.iss.url("/v1/auth/sms/verify");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                let url = url.clone();
                let bad = bad.clone();
                s.spawn(move || post_json(&url, &json!({"phone": PHONE, "code": bad})).status)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(statuses.iter().all(|s| *s == 400), "{statuses:?}");
    // However the guesses raced, every one was counted: the code is dead.
    assert_bad_code(&env.verify(PHONE, &code));
}

fn expired_code(b: Backend) {
    let Some(env) = setup(b, "  code_ttl: 2s\n") else {
        return;
    };
    let r = env.start(PHONE);
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["expires_in"], 2);
    let code = env.code(PHONE);
    assert!(
        env.tw.messages_to(PHONE)[0]
            .body
            .contains("expires in 1 min"),
        "the template's {{minutes}}: {:?}",
        env.tw.messages()
    );
    std::thread::sleep(Duration::from_millis(3100));
    assert_bad_code(&env.verify(PHONE, &code));
    assert!(env.users().is_empty());
}

fn resend_cancels_previous(b: Backend) {
    let Some(env) = setup(b, "  min_interval: 0s\n") else {
        return;
    };
    assert_eq!(env.start(PHONE).status, 202);
    let first = env.code(PHONE);
    assert_eq!(env.start(PHONE).status, 202);
    let second = env.code(PHONE);
    assert_eq!(env.sent_to(PHONE), 2);
    if first != second {
        assert_bad_code(&env.verify(PHONE, &first));
    }
    env.verify(PHONE, &second).pair();
}

fn min_interval(b: Backend) {
    // Default interval: 60 s.
    let Some(env) = setup(b, "") else { return };
    assert_eq!(env.start(PHONE).status, 202);
    let r = env.start(PHONE);
    r.assert_error(429, Some("too_many_requests"));
    let after = retry_after(&r);
    assert!((55..=60).contains(&after), "Retry-After {after}");
    assert_eq!(env.sent_to(PHONE), 1, "nothing sent while limited");
    // The first code still works; another number is not affected.
    env.verify(PHONE, &env.code(PHONE)).pair();
    assert_eq!(env.start("+12015550124").status, 202);
}

fn send_budgets(b: Backend) {
    let extra = "  min_interval: 0s\n  max_sends_per_phone_per_hour: 2\n  \
                 max_sends_per_ip_per_hour: 3\n  max_sends_per_hour: 6\n";
    let Some(env) = setup(b, extra) else { return };
    // Per phone: 2 an hour (from different IPs, so the IP budget is not what stops it).
    assert_eq!(env.start_from(PHONE, "198.51.100.1").status, 202);
    assert_eq!(env.start_from(PHONE, "198.51.100.2").status, 202);
    let r = env.start_from(PHONE, "198.51.100.3");
    r.assert_error(429, Some("too_many_requests"));
    // Sliding one-hour windows: up to two hours when the budget went early in a window.
    assert!((1..=7200).contains(&retry_after(&r)));
    assert_eq!(env.sent_to(PHONE), 2);
    // Per IP: 3 an hour, whatever the numbers.
    let ip = "203.0.113.7";
    for n in ["+12015550131", "+12015550132", "+12015550133"] {
        assert_eq!(env.start_from(n, ip).status, 202, "{n}");
    }
    let r = env.start_from("+12015550134", ip);
    r.assert_error(429, Some("too_many_requests"));
    assert!((1..=7200).contains(&retry_after(&r)));
    assert_eq!(env.sent_to("+12015550134"), 0);
    // It was the IP's budget: the same number from another IP gets its code.
    assert_eq!(env.start_from("+12015550134", "203.0.113.8").status, 202);
    // Global: 6 an hour (2 + 3 + 1 spent), even from a fresh IP to a fresh number.
    let r = env.start_from("+12015550135", "192.0.2.99");
    r.assert_error(429, Some("too_many_requests"));
    assert!((1..=7200).contains(&retry_after(&r)));
    assert_eq!(env.tw.messages().len(), 6);
}

fn verify_budget_per_ip(b: Backend) {
    let Some(env) = setup(b, "  max_verifications_per_ip_per_hour: 3\n") else {
        return;
    };
    assert_eq!(env.start(PHONE).status, 202);
    let code = env.code(PHONE);
    for _ in 0..3 {
        assert_bad_code(&env.verify(PHONE, "000000"));
    }
    let r = env.verify(PHONE, &code);
    r.assert_error(429, Some("too_many_requests"));
    assert!(retry_after(&r) >= 1);
}

fn normalisation(b: Backend) {
    let Some(env) = setup(b, "  min_interval: 0s\n") else {
        return;
    };
    let r = env.start_body(&json!({"phone": "(201) 555-0123", "region": "US"}));
    assert_eq!(r.status, 202, "{}", r.text);
    // Sent to the E.164 form.
    let code = env.code(PHONE);
    let a = env.verify("+1 201-555-0123", &code).pair();
    let sub_a = env.iss.verify(&a.access)["sub"].clone();
    assert_eq!(env.start("+1 (201) 555 0123").status, 202);
    let code = env.code(PHONE);
    let r = post_json(
        &env.iss.url("/v1/auth/sms/verify"),
        &json!({"phone": "201.555.0123", "region": "us", "code": code}),
    );
    let b2 = r.pair();
    assert_eq!(env.iss.verify(&b2.access)["sub"], sub_a);
    assert_eq!(env.users().len(), 1);
    assert_eq!(env.users()[0]["phone"], PHONE);
    // A national number without a region is refused with a reason.
    let r = env.start("2015550123");
    let v = r.assert_error(400, Some("invalid_request"));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("region"),
        "{v}"
    );
}

fn country_allow_list_and_invalid_numbers(b: Backend) {
    let Some(env) = setup(b, "") else { return };
    // France is not in [US, GB]: refused, nothing sent.
    let r = env.start("+33 1 23 45 67 89");
    let v = r.assert_error(403, Some("forbidden"));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("FR"),
        "{v}"
    );
    assert!(env.tw.requests().is_empty(), "no SMS to a refused country");
    // GB is allowed.
    assert_eq!(env.start("+44 20 7946 0958").status, 202);
    assert_eq!(env.tw.messages().len(), 1);
    assert_eq!(env.tw.messages()[0].to, "+442079460958");
    // Not numbers, or not valid ones: 400 with a reason, never 5xx.
    for bad in [
        "hello",
        "+1 555",
        "+999 123 456 789",
        "",
        "+1 201-555-0123 ext. 7",
    ] {
        let r = env.start(bad);
        let v = r.assert_error(400, Some("invalid_request"));
        assert!(
            v["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("phone"),
            "{bad}: {v}"
        );
    }
    let r = env.start_body(&json!({"phone": "2015550123", "region": "Narnia"}));
    r.assert_error(400, Some("invalid_request"));
    let r = env.start_body(&json!({"phone": PHONE, "extra": 1}));
    r.assert_error(400, Some("invalid_request"));
    let r = post_raw(
        &env.iss.url("/v1/auth/sms/start"),
        Some("text/plain"),
        b"x".to_vec(),
    );
    r.assert_error(415, Some("invalid_request"));
    let r = post_json(
        &env.iss.url("/v1/auth/sms/verify"),
        &json!({"phone": "nope", "code": "123456"}),
    );
    r.assert_error(400, Some("invalid_request"));
    assert_eq!(env.tw.messages().len(), 1);
}

fn provider_down_then_back(b: Backend) {
    // Default min_interval (60 s): a failed send must not hold the number back.
    let Some(env) = setup(b, "") else { return };
    env.tw.fail_with(500);
    let r = env.start(PHONE);
    let v = r.assert_error(503, Some("unavailable"));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("SMS provider"),
        "{v}"
    );
    // One retry (retries: 1) on a 5xx, then the answer.
    let tries = env.tw.requests();
    assert_eq!(tries.len(), 2, "first attempt plus one retry");
    // The code of the failed send was never made valid, and no account exists.
    let failed_code = tries[0].code().expect("the attempted SMS carried a code");
    assert_bad_code(&env.verify(PHONE, &failed_code));
    assert!(env.users().is_empty());
    assert!(env.messages(PHONE).is_empty(), "nothing logged as sent");
    // 429 from Twilio is retried as well, and also ends in 503.
    env.tw.fail_with(429);
    env.start(PHONE).assert_error(503, Some("unavailable"));
    assert_eq!(env.tw.requests().len(), 4);
    // Twilio is back: a retry right away works (the failed sends did not start the interval).
    env.tw.succeed();
    let r = env.start(PHONE);
    assert_eq!(r.status, 202, "{}", r.text);
    let code = env.code(PHONE);
    env.verify(PHONE, &code).pair();
    let m = get_with(&env.iss.admin_url("/metrics"), None).text;
    assert!(
        m.contains("portcullis_issuer_sms_sends_total{outcome=\"failed\",provider=\"twilio\"} 2"),
        "{m}"
    );
}

fn provider_refusal_and_timeout(b: Backend) {
    let Some(env) = setup(b, "  min_interval: 0s\n  timeout: 1s\n") else {
        return;
    };
    // A 4xx is final: no retry.
    env.tw.fail_with(400);
    env.start(PHONE).assert_error(503, Some("unavailable"));
    assert_eq!(env.tw.requests().len(), 1, "4xx is not retried");
    // A provider slower than the timeout: bounded (2 attempts of 1 s plus backoff), then 503.
    env.tw.succeed();
    env.tw.set_delay(Duration::from_secs(5));
    let t = Instant::now();
    env.start(PHONE).assert_error(503, Some("unavailable"));
    let took = t.elapsed();
    // Without the timeout: two 5 s answers, over 10 s.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "took {took:?}: no timeout-and-retry?"
    );
    env.tw.set_delay(Duration::ZERO);
    // Wrong credentials: Twilio answers 401, the caller gets 503, nothing half-created.
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    std::fs::write(dir.path().join("twilio-token"), "not-the-token\n").expect("token");
    let iss = start_issuer(dir.path(), db, &twilio_yaml(&env.tw, ""));
    let before = env.tw.messages().len();
    let r = post_json(&iss.url("/v1/auth/sms/start"), &json!({"phone": PHONE}));
    r.assert_error(503, Some("unavailable"));
    assert_eq!(env.tw.messages().len(), before);
}

fn twilio_request_shape(b: Backend) {
    let extra = "  message: \"Portcullis: {code} is your code ({minutes} min)\"\n";
    let Some(env) = setup(b, extra) else { return };
    assert_eq!(env.start(PHONE).status, 202);
    let reqs = env.tw.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{SID}/Messages.json")
    );
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{SID}:{TOKEN}"),
    );
    assert_eq!(
        req.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert!(req
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/x-www-form-urlencoded"));
    let form = req.form();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(field("To").as_deref(), Some(PHONE));
    assert_eq!(field("From").as_deref(), Some("+15005550006"));
    assert_eq!(field("MessagingServiceSid"), None);
    assert_eq!(field("StatusCallback").as_deref(), Some(CALLBACK));
    let body = field("Body").expect("Body");
    let code = env.code(PHONE);
    assert_eq!(body, format!("Portcullis: {code} is your code (5 min)"));
    // The answered sid is what the message log keeps.
    let msgs = env.messages(PHONE);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["provider"], "twilio");
    assert_eq!(msgs[0]["provider_id"], env.tw.messages()[0].sid.as_str());
    assert_eq!(msgs[0]["status"], "queued");
    assert!(
        !msgs[0].to_string().contains(&code),
        "the code is never stored: {}",
        msgs[0]
    );

    // A messaging service instead of a sender number.
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    std::fs::write(dir.path().join("twilio-token"), TOKEN).expect("token");
    let yaml = twilio_yaml(&env.tw, "").replace(
        "from: \"+15005550006\"",
        "messaging_service_sid: MG0123456789abcdef0123456789abcdef",
    );
    let iss = start_issuer(dir.path(), db, &yaml);
    let r = post_json(
        &iss.url("/v1/auth/sms/start"),
        &json!({"phone": "+12015550140"}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let m = env.tw.messages_to("+12015550140");
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].messaging_service_sid.as_deref(),
        Some("MG0123456789abcdef0123456789abcdef")
    );
    assert_eq!(m[0].from, None);
}

fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn webhook_provider(b: Backend) {
    let Some(db) = db_kind(b) else { return };
    let dir = tempdir();
    let receiver = FakeTwilio::start(SID, TOKEN);
    std::fs::write(dir.path().join("hook-secret"), "hook-secret-value\n").expect("secret");
    let yaml = format!(
        "sms:\n  provider: webhook\n  allowed_countries: [US]\n  min_interval: 0s\n  \
         webhook:\n    url: {}/sms-hook\n    secret_file: hook-secret\n",
        receiver.base_url()
    );
    let iss = start_issuer(dir.path(), db, &yaml);
    let r = post_json(&iss.url("/v1/auth/sms/start"), &json!({"phone": PHONE}));
    assert_eq!(r.status, 202, "{}", r.text);
    let reqs = receiver.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/sms-hook");
    assert!(req
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json"));
    let doc: Value = serde_json::from_slice(&req.body).expect("JSON body");
    assert_eq!(doc["to"], PHONE);
    assert!(
        doc.get("code").is_none(),
        "the bare code only when include_code is set: {doc}"
    );
    let code = req.code().expect("a code in the body");
    assert!(doc["body"].as_str().unwrap_or_default().contains(&code));
    // The signature, checked independently: HMAC-SHA256(secret, timestamp "." body).
    let ts = req
        .header("x-portcullis-timestamp")
        .expect("timestamp header");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((ts.parse::<i64>().expect("unix seconds") - now).abs() < 30);
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&req.body);
    let expected = format!("sha256={}", hmac_sha256_hex(b"hook-secret-value", &signed));
    assert_eq!(
        req.header("x-portcullis-signature"),
        Some(expected.as_str())
    );
    let forged = format!("sha256={}", hmac_sha256_hex(b"another-secret", &signed));
    assert_ne!(req.header("x-portcullis-signature"), Some(forged.as_str()));
    // The code works; the receiver's id is the message's provider id.
    post_json(
        &iss.url("/v1/auth/sms/verify"),
        &json!({"phone": PHONE, "code": code}),
    )
    .pair();
    let r = iss.admin_get("/admin/sms/messages");
    assert_eq!(r.json()["messages"][0]["provider"], "webhook");
    assert_eq!(r.json()["messages"][0]["provider_id"], "hook-1");
    // Receiver down: 503.
    receiver.fail_with(502);
    let r = post_json(&iss.url("/v1/auth/sms/start"), &json!({"phone": PHONE}));
    r.assert_error(503, Some("unavailable"));
}

fn delivery_reports(b: Backend) {
    let Some(env) = setup(b, "") else { return };
    assert_eq!(env.start(PHONE).status, 202);
    let sid = env.tw.messages()[0].sid.clone();
    let url = env.iss.url("/v1/webhooks/sms-status");
    let report = |status: &'static str, error: Option<&'static str>| {
        let mut p = vec![
            ("MessageSid", sid.as_str()),
            ("SmsSid", sid.as_str()),
            ("AccountSid", SID),
            ("From", "+15005550006"),
            ("To", PHONE),
            ("MessageStatus", status),
            ("SmsStatus", status),
            ("ApiVersion", "2010-04-01"),
        ];
        if let Some(e) = error {
            p.push(("ErrorCode", e));
        }
        p
    };
    let status_now = || {
        env.messages(PHONE)[0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status_now(), "queued");
    // Valid signature over the configured public URL: stored.
    let r = post_status_callback(&url, CALLBACK, Some(TOKEN), &report("sent", None));
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(status_now(), "sent");
    // Forged: wrong token, missing header, or signed for the URL actually hit: 403, unchanged.
    let bad = [
        post_status_callback(
            &url,
            CALLBACK,
            Some("wrong-token"),
            &report("undelivered", Some("30003")),
        ),
        post_status_callback(&url, CALLBACK, None, &report("undelivered", Some("30003"))),
        post_status_callback(
            &url,
            &url,
            Some(TOKEN),
            &report("undelivered", Some("30003")),
        ),
    ];
    for r in &bad {
        r.assert_error(403, Some("forbidden"));
    }
    assert_eq!(status_now(), "sent");
    // A parameter changed after signing.
    let params = report("delivered", None);
    let sig = portcullis_tests::fake_twilio::twilio_signature(TOKEN, CALLBACK, &params);
    let mut tampered = params.clone();
    tampered[5] = ("MessageStatus", "failed");
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&tampered)
        .finish();
    let r = send(
        client()
            .post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", sig)
            .body(body),
    );
    r.assert_error(403, Some("forbidden"));
    assert_eq!(status_now(), "sent");
    // Undelivered with an error code: stored and visible.
    let r = post_status_callback(
        &url,
        CALLBACK,
        Some(TOKEN),
        &report("undelivered", Some("30003")),
    );
    assert_eq!(r.status, 204, "{}", r.text);
    let m = &env.messages(PHONE)[0];
    assert_eq!(m["status"], "undelivered");
    assert_eq!(m["error_code"], "30003");
    // A late `sent` does not overwrite a final status.
    let r = post_status_callback(&url, CALLBACK, Some(TOKEN), &report("sent", None));
    assert_eq!(r.status, 204);
    assert_eq!(status_now(), "undelivered");
    // Unknown statuses are kept, bounded.
    assert_eq!(env.start("+12015550150").status, 202);
    let sid2 = env.tw.messages_to("+12015550150")[0].sid.clone();
    let long = "x".repeat(500);
    let p = [
        ("MessageSid", sid2.as_str()),
        ("MessageStatus", long.as_str()),
    ];
    let r = post_status_callback(&url, CALLBACK, Some(TOKEN), &p);
    assert_eq!(r.status, 204, "{}", r.text);
    let s = env.messages("+12015550150")[0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(s, "x".repeat(32));
    // Malformed: not a form, or no MessageSid.
    let r = post_raw(&url, Some("application/json"), b"{}".to_vec());
    r.assert_error(415, Some("invalid_request"));
    let r = post_status_callback(&url, CALLBACK, Some(TOKEN), &[("MessageStatus", "sent")]);
    r.assert_error(400, Some("invalid_request"));
    let metrics = get_with(&env.iss.admin_url("/metrics"), None).text;
    assert!(
        metrics.contains("portcullis_issuer_sms_delivery_reports_total{status=\"undelivered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_issuer_sms_delivery_reports_total{status=\"other\"} 1"),
        "{metrics}"
    );
}

fn identical_answers(b: Backend) {
    let Some(env) = setup(b, "  min_interval: 0s\n") else {
        return;
    };
    assert_eq!(env.start(PHONE).status, 202);
    env.verify(PHONE, &env.code(PHONE)).pair();
    let known = env.start(PHONE);
    let unknown = env.start("+12015550160");
    assert_eq!(known.status, 202);
    assert_eq!(
        (known.status, known.text.clone()),
        (unknown.status, unknown.text.clone())
    );
    let ct = |r: &Resp| r.header("content-type");
    assert_eq!(ct(&known), ct(&unknown));
}

fn test_numbers(b: Backend) {
    let reviewer = "+12015550199";
    let extra = format!("  test_numbers:\n    \"{reviewer}\": \"424242\"\n");
    let Some(env) = setup(b, &extra) else { return };
    let r = env.start(reviewer);
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(env.tw.requests().is_empty(), "no SMS to a test number");
    assert_bad_code(&env.verify(reviewer, "424243"));
    let p = env.verify("+1 201 555 0199", "424242").pair();
    assert_eq!(env.iss.verify(&p.access)["amr"], json!(["sms"]));
    // Other numbers are unaffected.
    assert_eq!(env.start(PHONE).status, 202);
    assert_eq!(env.tw.messages().len(), 1);

    // Off by default: the same number gets a real SMS and the fixed code means nothing.
    let Some(plain) = setup(b, "") else { return };
    assert_eq!(plain.start(reviewer).status, 202);
    assert_eq!(plain.sent_to(reviewer), 1);
    if plain.code(reviewer) != "424242" {
        assert_bad_code(&plain.verify(reviewer, "424242"));
    }
}

fn set_signup(config: &Path, on: bool) {
    let text = std::fs::read_to_string(config).expect("config");
    let text = text
        .replace("  signup: true\n", "")
        .replace("  signup: false\n", "");
    let text = text.replace(
        "sms:\n",
        &format!("sms:\n  signup: {}\n", if on { "true" } else { "false" }),
    );
    std::fs::write(config, text).expect("config");
}

fn signup_disabled(b: Backend) {
    let extra = "  min_interval: 0s\n  test_numbers:\n    \"+12015550198\": \"135790\"\n";
    let Some(mut env) = setup(b, extra) else {
        return;
    };
    // An account made while sign-up was on.
    assert_eq!(env.start(PHONE).status, 202);
    let first = env.verify(PHONE, &env.code(PHONE)).pair();
    let sub = env.iss.verify(&first.access)["sub"].clone();
    env.iss.stop();
    set_signup(&env.iss.config, false);
    env.iss.start_again();
    // Unknown number: the same 202 as always, but no SMS and no account.
    let known = env.start(PHONE);
    let unknown = env.start("+12015550170");
    assert_eq!(
        (known.status, known.text.clone()),
        (unknown.status, unknown.text.clone())
    );
    assert_eq!(
        env.sent_to("+12015550170"),
        0,
        "no SMS for a number without an account"
    );
    assert_bad_code(&env.verify("+12015550170", "123456"));
    // The existing account still logs in.
    let again = env.verify(PHONE, &env.code(PHONE)).pair();
    assert_eq!(env.iss.verify(&again.access)["sub"], sub);
    // A right code for a number without an account: a clear refusal, no account.
    let r = env.verify("+12015550198", "135790");
    let v = r.assert_error(403, Some("disabled"));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("sign-up"),
        "{v}"
    );
    assert_eq!(env.users().len(), 1);
}
