"""Schemathesis hooks for the issuer's OpenAPI conformance run (scripts/openapi-fuzz.sh).

`valid_request_accepted` is Schemathesis' positive-data-acceptance check narrowed to what the
issue asks: a request the document allows must never be refused *as malformed*. The server
may still refuse it on its merits with the answers the document lists: wrong credentials or
codes (`invalid_grant`, `invalid_client`, `invalid_token`: RFC 6749 section 5.2 mandates 400
for some of them), a password the policy rejects (`weak_password`), a conflict, a limit.
"""

import schemathesis

# Answers that mean "your request is malformed" rather than "your credentials are wrong".
MALFORMED = {400: {"invalid_request", "unsupported_grant_type"}}
ALWAYS_MALFORMED = {413, 415}


def _error_code(response):
    try:
        body = response.json()
    except Exception:  # not JSON: the shape check reports it
        return None
    return body.get("error") if isinstance(body, dict) else None


@schemathesis.check
def valid_request_accepted(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    code = _error_code(response)
    if status in ALWAYS_MALFORMED or code in MALFORMED.get(status, ()):
        raise AssertionError(
            f"a request the document allows was refused as malformed: {status} {code}: "
            f"{response.text[:300]}"
        )
    return None
