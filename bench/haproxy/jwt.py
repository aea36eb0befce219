#!/usr/bin/env python3
"""JWT helpers for the HAProxy contestant of bench/run.sh (standard library and the openssl
command only).

    jwt.py pem JWKS TOKEN_FILE
        The SPKI PEM of the P-256 public key in JWKS whose kid the first token of TOKEN_FILE
        names (HAProxy's jwt_verify takes a PEM file, not a JWK).

    jwt.py probes KEY ISS AUD
        Lines "EXPECTED NAME TOKEN": tokens signed (ES256, through `openssl dgst`) with the P-256
        private key KEY (PEM), valid or wrong in one way each, and the status the gateway answers
        them with (leeway 30 s, the gateway's default). An HAProxy whose jwt_verify key is KEY's
        public half must answer the same: bench/run.sh checks it before measuring.
"""

import base64
import json
import subprocess
import sys
import time

# DER of SubjectPublicKeyInfo{id-ecPublicKey, prime256v1} up to the BIT STRING's content.
P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pem(jwks_file: str, token_file: str) -> None:
    with open(token_file) as f:
        token = f.readline().strip()
    kid = json.loads(unb64u(token.split(".")[0])).get("kid")
    with open(jwks_file) as f:
        keys = json.load(f)["keys"]
    for k in keys:
        if k.get("kty") == "EC" and k.get("crv") == "P-256" and k.get("kid") == kid:
            x, y = unb64u(k["x"]), unb64u(k["y"])
            if len(x) != 32 or len(y) != 32:
                sys.exit(f"jwt.py: key {kid}: x and y must be 32 bytes")
            der = P256_SPKI_PREFIX + b"\x04" + x + y
            body = base64.b64encode(der).decode()
            lines = [body[i : i + 64] for i in range(0, len(body), 64)]
            print("-----BEGIN PUBLIC KEY-----", *lines, "-----END PUBLIC KEY-----", sep="\n")
            return
    sys.exit(f"jwt.py: no P-256 key with kid {kid!r} in {jwks_file}")


def der_to_raw(sig: bytes) -> bytes:
    """ECDSA-Sig-Value (DER SEQUENCE of r, s) -> the fixed r || s of JWS (RFC 7518 §3.4)."""
    if sig[0] != 0x30:
        raise ValueError("not a DER sequence")
    i = 2 if sig[1] < 0x80 else 2 + (sig[1] & 0x7F)
    out = b""
    for _ in range(2):
        if sig[i] != 0x02:
            raise ValueError("not a DER integer")
        n = sig[i + 1]
        v = sig[i + 2 : i + 2 + n].lstrip(b"\x00")
        out += v.rjust(32, b"\x00")
        i += 2 + n
    return out


def sign(key: str, header: dict, claims: dict) -> str:
    head = b64u(json.dumps(header, separators=(",", ":")).encode())
    body = b64u(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{head}.{body}".encode()
    der = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key],
        input=signing_input,
        capture_output=True,
        check=True,
    ).stdout
    return f"{head}.{body}.{b64u(der_to_raw(der))}"


def probes(key: str, iss: str, aud: str) -> None:
    now = int(time.time())
    header = {"alg": "ES256", "typ": "at+jwt", "kid": "probe"}
    claims = {
        "iss": iss,
        "sub": "probe-user",
        "aud": aud,
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "jti": "probe-jti",
        "sid": "probe-sid",
        "scope": "openid",
        "roles": ["user"],
    }

    def variant(expect, name, h=None, c=None, drop=()):
        hh = dict(header, **(h or {}))
        cc = {k: v for k, v in dict(claims, **(c or {})).items() if k not in drop}
        print(expect, name, sign(key, hh, cc))

    variant(200, "valid")
    variant(200, "aud-list-with-ours", c={"aud": ["other", aud]})
    variant(200, "typ-application/at+jwt", h={"typ": "application/at+jwt"})
    variant(200, "no-nbf-no-iat", drop=("nbf", "iat"))
    variant(200, "expired-10s-ago-within-leeway", c={"exp": now - 10})
    variant(401, "wrong-aud", c={"aud": "other"})
    variant(401, "aud-list-without-ours", c={"aud": ["other", "another"]})
    variant(401, "no-aud", drop=("aud",))
    variant(401, "wrong-iss", c={"iss": iss + ".evil"})
    variant(401, "no-iss", drop=("iss",))
    variant(401, "expired-120s-ago", c={"exp": now - 120})
    variant(401, "no-exp", drop=("exp",))
    variant(401, "nbf-in-120s", c={"nbf": now + 120})
    variant(401, "iat-in-120s", c={"iat": now + 120})
    variant(401, "typ-JWT", h={"typ": "JWT"})
    variant(401, "alg-ES384", h={"alg": "ES384"})
    variant(401, "alg-HS256", h={"alg": "HS256"})
    good = sign(key, header, claims)
    h64, p64, s64 = good.split(".")
    none = b64u(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    print(401, "alg-none-unsigned", f"{none}.{p64}.")
    sig = bytearray(unb64u(s64))
    sig[len(sig) // 2] ^= 0x01
    print(401, "flipped-signature-bit", f"{h64}.{p64}.{b64u(bytes(sig))}")
    print(401, "garbage", "not.a.jwt")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "pem":
        pem(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "probes":
        probes(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
