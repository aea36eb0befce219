"""Schemathesis hooks for the issuer's OpenAPI conformance run (scripts/openapi-fuzz.sh).

`valid_request_accepted` is Schemathesis' positive-data-acceptance check narrowed to what the
issue asks: a request the document allows must never be refused *as malformed*. The server
may still refuse it on its merits with the answers the document lists: wrong credentials or
codes (`invalid_grant`, `invalid_client`, `invalid_token`: RFC 6749 section 5.2 mandates 400
for some of them), a password the policy rejects (`weak_password`), a conflict, a limit.
"""

import schemathesis
from hypothesis import strategies as st

# `format: phone` (the issuer's phone fields, see its OpenAPI document): whether a number
# exists is libphonenumber's numbering-plan data, which no pattern can state, so the
# document's pattern only bounds the spelling. Without this, Schemathesis would treat the
# format as unknown and generate arbitrary strings as "valid" phones. Real numbers in several
# countries and spellings, all accepted by the issuer's parser.
PHONES = [
    "+12015550123",
    "+1 201-555-0123",
    "+1 (201) 555-0123",
    "+1.201.555.0123",
    "+1 212 555 0142",
    "+442079460958",
    "+44 20 7946 0958",
    "+33 6 12 34 56 78",
    "+61 2 9876 5432",
    "+61 412 345 678",
    "+81 3-3581-0101",
]
schemathesis.openapi.format("phone", st.sampled_from(PHONES))

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
