//! Bounds on an HTTP/1 request head, checked on the bytes as they arrive.
//!
//! Pingora's HTTP/1 reader buffers up to 1 MiB of head before it gives up, and it only
//! counts after a read. The connection guard runs this scanner on every byte *before* it
//! reaches Pingora, so a head that breaks a limit is refused while the gateway holds at most
//! `max_head_size` bytes of it, like nginx's `large_client_header_buffers`.

/// The configured bounds of one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Longest request target (the URI in the request line); longer gets 414.
    pub max_uri_length: usize,
    /// Longest header line; longer gets 431.
    pub max_header_line: usize,
    /// Request line plus every header line; more gets 431.
    pub max_head_size: usize,
    /// Most header fields; more gets 431.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_uri_length: 8 << 10,
            max_header_line: 8 << 10,
            max_head_size: 32 << 10,
            max_headers: 100,
        }
    }
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// The request target is longer than `max_uri_length`.
    UriTooLong,
    /// One header line is longer than `max_header_line`.
    LineTooLong,
    /// The whole head is larger than `max_head_size`.
    HeadTooLarge,
    /// More than `max_headers` header fields.
    TooManyHeaders,
}

/// A complete HTTP/1.1 answer with a JSON body in the gateway's error shape, as one static
/// byte string: the guard writes it itself, before Pingora has a request to answer. The
/// content length is written out (a test checks it against the body).
macro_rules! answer {
    ($status:literal, $text:literal, $len:literal, $code:literal, $desc:literal) => {
        concat!(
            "HTTP/1.1 ",
            $status,
            " ",
            $text,
            "\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ",
            $len,
            "\r\n\r\n{\"error\":\"",
            $code,
            "\",\"error_description\":\"",
            $desc,
            "\"}"
        )
        .as_bytes()
    };
}

impl HeadError {
    /// The complete answer, written before the connection is closed.
    pub(crate) fn response(self) -> &'static [u8] {
        match self {
            HeadError::UriTooLong => answer!(
                "414",
                "URI Too Long",
                "74",
                "uri_too_long",
                "the request URI is too long"
            ),
            HeadError::LineTooLong => answer!(
                "431",
                "Request Header Fields Too Large",
                "84",
                "header_too_large",
                "a request header line is too long"
            ),
            HeadError::HeadTooLarge => answer!(
                "431",
                "Request Header Fields Too Large",
                "80",
                "header_too_large",
                "the request head is too large"
            ),
            HeadError::TooManyHeaders => answer!(
                "431",
                "Request Header Fields Too Large",
                "81",
                "header_too_large",
                "too many request header fields"
            ),
        }
    }

    /// Label for logs and metrics.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            HeadError::UriTooLong => "uri_too_long",
            HeadError::LineTooLong => "header_line_too_long",
            HeadError::HeadTooLarge => "head_too_large",
            HeadError::TooManyHeaders => "too_many_headers",
        }
    }
}

/// The answer to a head that did not arrive within `client_header_timeout`.
pub(crate) const TIMEOUT_RESPONSE: &[u8] = answer!(
    "408",
    "Request Timeout",
    "89",
    "request_timeout",
    "the request head did not arrive in time"
);

/// Where the scanner is within the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestLine {
    Method,
    Target,
    Version,
}

/// What the bytes seen so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Still inside the head.
    Incomplete,
    /// The head ended after this many bytes of the last input; the rest is body.
    Complete(usize),
    /// A limit was broken.
    Refused(HeadError),
}

/// Incremental head scanner: one per request, fed every byte of the head once.
#[derive(Debug, Clone)]
pub(crate) struct HeadScanner {
    limits: HeadLimits,
    head_len: usize,
    line_len: usize,
    /// 0 while on the request line, then one per header line.
    lines: usize,
    part: RequestLine,
    target_len: usize,
    /// The header line so far has a byte other than CR (an empty line ends the head).
    content: bool,
    /// The header line so far ends with CR.
    last_cr: bool,
}

impl HeadScanner {
    /// A scanner at the start of a request head.
    pub(crate) fn new(limits: HeadLimits) -> Self {
        HeadScanner {
            limits,
            head_len: 0,
            line_len: 0,
            lines: 0,
            part: RequestLine::Method,
            target_len: 0,
            content: false,
            last_cr: false,
        }
    }

    /// Bytes of this head seen so far.
    pub(crate) fn seen(&self) -> usize {
        self.head_len
    }

    /// Accounts `input`, the next bytes of the connection.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Scan {
        let mut i = 0;
        while i < input.len() {
            // A line (or the part of it that arrived) at a time.
            let rest = &input[i..];
            let newline = memchr::memchr(b'\n', rest);
            let seg = &rest[..newline.unwrap_or(rest.len())];
            self.head_len += seg.len() + usize::from(newline.is_some());
            if self.head_len > self.limits.max_head_size {
                return Scan::Refused(HeadError::HeadTooLarge);
            }
            if !seg.is_empty() {
                self.content |= seg.iter().any(|&b| b != b'\r');
                self.line_len += seg.len();
                self.last_cr = seg.last() == Some(&b'\r');
            }
            if self.lines == 0 {
                if let Some(e) = self.request_line(seg) {
                    return Scan::Refused(e);
                }
            }
            let Some(at) = newline else {
                // Mid-line; the +1 allows for the line's closing CR.
                if self.lines > 0 && self.line_len > self.limits.max_header_line + 1 {
                    return Scan::Refused(HeadError::LineTooLong);
                }
                break;
            };
            if self.lines == 0 {
                // Empty lines before the request line are skipped (RFC 9112 §2.2), but they
                // still count towards the head size above.
                if self.content {
                    self.lines = 1;
                }
            } else if !self.content {
                return Scan::Complete(i + at + 1);
            } else if self.line_len - usize::from(self.last_cr) > self.limits.max_header_line {
                return Scan::Refused(HeadError::LineTooLong);
            } else {
                self.lines += 1;
                if self.lines - 1 > self.limits.max_headers {
                    return Scan::Refused(HeadError::TooManyHeaders);
                }
            }
            self.line_len = 0;
            self.content = false;
            self.last_cr = false;
            i += at + 1;
        }
        Scan::Incomplete
    }

    /// Measures the request target in the next piece of the request line.
    fn request_line(&mut self, mut seg: &[u8]) -> Option<HeadError> {
        loop {
            let space = memchr::memchr(b' ', seg);
            match (self.part, space) {
                (RequestLine::Method, Some(p)) => {
                    self.part = RequestLine::Target;
                    seg = &seg[p + 1..];
                }
                (RequestLine::Target, Some(p)) => {
                    self.target_len += p;
                    self.part = RequestLine::Version;
                    seg = &seg[p + 1..];
                }
                (RequestLine::Target, None) => {
                    self.target_len += seg.len();
                    break;
                }
                _ => break,
            }
        }
        // Method and version are short; anything else on the line is padding to refuse.
        (self.target_len > self.limits.max_uri_length
            || self.line_len > self.limits.max_uri_length + 64)
            .then_some(HeadError::UriTooLong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> HeadLimits {
        HeadLimits {
            max_uri_length: 32,
            max_header_line: 20,
            max_head_size: 200,
            max_headers: 3,
        }
    }

    fn scan_all(limits: HeadLimits, input: &[u8]) -> Scan {
        HeadScanner::new(limits).feed(input)
    }

    #[test]
    fn a_normal_head_completes_where_it_ends() {
        let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nBODY";
        assert_eq!(scan_all(small(), req), Scan::Complete(req.len() - 4));
        // Bare LF endings, as httparse accepts them.
        let req = b"GET /a HTTP/1.1\nHost: x\n\nrest";
        assert_eq!(scan_all(small(), req), Scan::Complete(req.len() - 4));
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let req = b"\r\nPOST /p?q=1 HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";
        let mut s = HeadScanner::new(small());
        let mut done = None;
        for (i, b) in req.iter().enumerate() {
            if let Scan::Complete(n) = s.feed(std::slice::from_ref(b)) {
                assert_eq!(n, 1);
                done = Some(i + 1);
            }
        }
        assert_eq!(done, Some(req.len()));
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_answer() {
        let heads: [&[u8]; 5] = [
            b"GET /a HTTP/1.1\r\nHost: x\r\nA: 1\r\n\r\nbody",
            b"\r\nGET /a HTTP/1.1\nA: 12345678901234567890\n\n",
            b"GET /a HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
            b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \r\r\r\n\r\n",
        ];
        for head in heads {
            let whole = scan_all(small(), head);
            for cut in 1..head.len() {
                let mut s = HeadScanner::new(small());
                let got = match s.feed(&head[..cut]) {
                    Scan::Incomplete => match s.feed(&head[cut..]) {
                        Scan::Complete(n) => Scan::Complete(n + cut),
                        other => other,
                    },
                    other => other,
                };
                assert_eq!(
                    got,
                    whole,
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(head)
                );
            }
        }
    }

    #[test]
    fn each_limit_refuses_with_its_own_reason() {
        let long_uri = format!("GET /{} HTTP/1.1\r\n", "a".repeat(40));
        assert_eq!(
            scan_all(small(), long_uri.as_bytes()),
            Scan::Refused(HeadError::UriTooLong)
        );
        let long_line = format!("GET / HTTP/1.1\r\nX: {}\r\n", "b".repeat(30));
        assert_eq!(
            scan_all(small(), long_line.as_bytes()),
            Scan::Refused(HeadError::LineTooLong)
        );
        let many = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(
            scan_all(small(), many),
            Scan::Refused(HeadError::TooManyHeaders)
        );
        let big = format!("GET / HTTP/1.1\r\n{}", "H: 0123456789\r\n".repeat(20));
        let limits = HeadLimits {
            max_headers: 100,
            ..small()
        };
        assert_eq!(
            scan_all(limits, big.as_bytes()),
            Scan::Refused(HeadError::HeadTooLarge)
        );
        // Endless empty lines are not free either.
        assert_eq!(
            scan_all(small(), &b"\r\n".repeat(150)),
            Scan::Refused(HeadError::HeadTooLarge)
        );
        // Spaces padding the request line.
        let padded = format!("GET /x HTTP/1.1{}\r\n", " ".repeat(120));
        let limits = HeadLimits {
            max_head_size: 1000,
            ..small()
        };
        assert_eq!(
            scan_all(limits, padded.as_bytes()),
            Scan::Refused(HeadError::UriTooLong)
        );
    }

    #[test]
    fn exactly_at_the_limits_is_allowed() {
        let req = format!(
            "GET /{} HTTP/1.1\r\nX: {}\r\nA: 1\r\nB: 2\r\n\r\n",
            "a".repeat(31),
            "b".repeat(17)
        );
        assert!(matches!(
            scan_all(small(), req.as_bytes()),
            Scan::Complete(_)
        ));
    }

    #[test]
    fn answers_are_complete_http_messages() {
        for e in [
            HeadError::UriTooLong,
            HeadError::LineTooLong,
            HeadError::HeadTooLarge,
            HeadError::TooManyHeaders,
        ] {
            check_answer(e.response());
        }
        check_answer(TIMEOUT_RESPONSE);
    }

    fn check_answer(bytes: &[u8]) {
        {
            let text = std::str::from_utf8(bytes).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{text}");
            assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
        }
    }
}
