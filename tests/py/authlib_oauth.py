"""A third-party OAuth 2.0 client against the real issuer: authlib's requests session, with
its default client authentication and nothing adapted to Portcullis.

Driven by tests/tests/issuer_oauth.rs (`authlib_session`), which starts the issuer, creates the
user and the API keys, and passes them in the environment:

  PC_ISSUER          the issuer's base URL (its `iss`)
  PC_FIRST_PARTY     the first-party client's id
  PC_USERNAME, PC_PASSWORD, PC_USER_ID   a user account
  PC_MACHINE_ID, PC_MACHINE_SECRET       an API key (a confidential client) without permissions
  PC_RS_ID, PC_RS_SECRET                 an API key with permissions introspect and revoke

Prints one line per step and `authlib: all checks passed`; exits 1 at the first failure.
"""

import base64
import json
import os
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

env = os.environ
ISSUER = env["PC_ISSUER"]


def check(ok, what, detail=""):
    if not ok:
        print(f"FAILED: {what} {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def refused(call, error):
    """Whether `call` raises authlib's OAuthError with this `error` code."""
    try:
        call()
    except OAuthError as e:
        return e.error == error
    return False


# RFC 8414 metadata, validated by authlib's own validators. `response_types_supported` is
# checked apart: it is required and present, but empty (no authorization endpoint), which
# authlib's validator reads as missing.
meta = requests.get(f"{ISSUER}/.well-known/oauth-authorization-server", timeout=10).json()
md = AuthorizationServerMetadata(meta)
for key in AuthorizationServerMetadata.REGISTRY_KEYS:
    if key != "response_types_supported":
        getattr(md, f"validate_{key}")()
check(meta["response_types_supported"] == [], "metadata validates (RFC 8414)", meta)
check(
    requests.get(f"{ISSUER}/.well-known/openid-configuration", timeout=10).json() == meta,
    "the discovery document is the same",
)
TOKEN = meta["token_endpoint"]
INTROSPECT = meta["introspection_endpoint"]
REVOKE = meta["revocation_endpoint"]

# 1. Password grant with the first-party public client: authlib's default for a client
#    without a secret is `none` (client_id in the form).
user = OAuth2Session(client_id=env["PC_FIRST_PARTY"])
check(user.token_endpoint_auth_method == "none", "public client authenticates with none")
tok = user.fetch_token(TOKEN, username=env["PC_USERNAME"], password=env["PC_PASSWORD"])
check(tok["token_type"] == "Bearer" and tok.get("refresh_token"), "password grant", tok)
c = claims(tok["access_token"])
check(
    c["client_id"] == env["PC_FIRST_PARTY"] and c["sub"] == env["PC_USER_ID"],
    "the user's token names the first-party client",
    c,
)
first_refresh = tok["refresh_token"]
tok = user.refresh_token(TOKEN)
check(tok["refresh_token"] != first_refresh, "refresh rotates the refresh token")
check(claims(tok["access_token"])["client_id"] == env["PC_FIRST_PARTY"], "refresh keeps the client")
me = user.get(f"{ISSUER}/v1/users/me", timeout=10)
check(me.status_code == 200 and me.json()["id"] == env["PC_USER_ID"], "the token calls /v1/users/me")

# 2. Client credentials with an API key: authlib's default for a client with a secret is
#    client_secret_basic.
machine = OAuth2Session(client_id=env["PC_MACHINE_ID"], client_secret=env["PC_MACHINE_SECRET"])
check(machine.token_endpoint_auth_method == "client_secret_basic", "API key authenticates with Basic")
mtok = machine.fetch_token(TOKEN, grant_type="client_credentials")
check(claims(mtok["access_token"])["client_id"] == env["PC_MACHINE_ID"], "client_credentials grant")
mtok = machine.refresh_token(TOKEN)
check(claims(mtok["access_token"])["client_id"] == env["PC_MACHINE_ID"], "the API key's refresh")

# Presented credentials count on every grant.
wrong = OAuth2Session(client_id=env["PC_MACHINE_ID"], client_secret=env["PC_RS_SECRET"])
check(
    refused(lambda: wrong.fetch_token(TOKEN, username=env["PC_USERNAME"], password=env["PC_PASSWORD"]), "invalid_client"),
    "a wrong client secret fails the password grant",
)
check(
    refused(lambda: machine.fetch_token(TOKEN, username=env["PC_USERNAME"], password=env["PC_PASSWORD"]), "unauthorized_client"),
    "an API key may not use the password grant",
)
check(
    refused(lambda: machine.refresh_token(TOKEN, refresh_token=user.token["refresh_token"]), "invalid_grant"),
    "another client's refresh token is refused",
)

# 3. Introspection (RFC 7662).
own = machine.introspect_token(INTROSPECT, token=mtok["access_token"]).json()
check(
    own["active"] and own["token_type"] == "Bearer" and own["client_id"] == env["PC_MACHINE_ID"],
    "a client introspects its own token",
    own,
)
other = machine.introspect_token(INTROSPECT, token=user.token["access_token"]).json()
check(other == {"active": False}, "another client's token looks inactive to it", other)
rs = OAuth2Session(client_id=env["PC_RS_ID"], client_secret=env["PC_RS_SECRET"])
seen = rs.introspect_token(INTROSPECT, token=user.token["access_token"]).json()
check(
    seen["active"] and seen["client_id"] == env["PC_FIRST_PARTY"] and seen["sub"] == env["PC_USER_ID"],
    "a key with permission introspect sees every token",
    seen,
)
seen = rs.introspect_token(INTROSPECT, token=user.token["refresh_token"], token_type_hint="refresh_token").json()
check(seen["active"] and "token_type" not in seen, "a refresh token introspects without token_type", seen)

# 4. Revocation (RFC 7009).
r = machine.revoke_token(REVOKE, token=user.token["refresh_token"])
check(r.status_code == 200, "revoking another client's token answers 200")
seen = rs.introspect_token(INTROSPECT, token=user.token["access_token"]).json()
check(seen["active"], "... and changes nothing")
r = user.revoke_token(REVOKE, token=user.token["refresh_token"], token_type_hint="refresh_token")
check(r.status_code == 200, "the public client revokes its own token")
seen = rs.introspect_token(INTROSPECT, token=user.token["access_token"]).json()
check(seen == {"active": False}, "the whole session is over")
check(refused(lambda: user.refresh_token(TOKEN), "invalid_grant"), "its refresh token no longer works")
r = machine.revoke_token(REVOKE, token=mtok["access_token"], token_type_hint="access_token")
check(r.status_code == 200, "an API key revokes its own token")
own = machine.introspect_token(INTROSPECT, token=mtok["access_token"]).json()
check(own == {"active": False}, "... and it is inactive")

print("authlib: all checks passed")
