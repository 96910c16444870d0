"""Salted, deliberately slow password hashes (scrypt, from the standard library).

Stored form: ``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``. Verification costs about 50 ms of CPU,
so callers on the event loop run it in a thread (:func:`chatserver.rooms.service` does).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

N, R, P = 2**14, 8, 1
_DKLEN = 32


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=_DKLEN)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


# A valid hash of a random password: verifying against it when the user does not exist makes
# a wrong user cost as much time as a wrong password.
DUMMY_HASH = hash_password(secrets.token_hex(16))
