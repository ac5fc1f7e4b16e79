"""Password credentials: salted PBKDF2-SHA256 hashes, never passwords, compared in constant time.

Pure computation, separate from the queries that store them: verifying costs a hash of
:data:`ITERATIONS` rounds (a tenth of a second and more here), which the host runs in a worker
thread of its own, never while holding the state database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

ITERATIONS = 200_000
_UNKNOWN_SALT = b"\0" * 16
_UNKNOWN_HASH = b"\0" * 32


@dataclass(frozen=True)
class Credential:
    """A stored password: its salt, hash and the rounds that made it."""

    salt: bytes
    hash: bytes
    iterations: int


def _digest(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


def new(password: str) -> Credential:
    """The credential of ``password`` under a fresh random salt."""
    salt = os.urandom(16)
    return Credential(salt, _digest(password, salt, ITERATIONS), ITERATIONS)


def verify(credential: Credential | None, password: str) -> bool:
    """Whether ``password`` matches ``credential``; an unknown user (None) costs the same work
    and never matches."""
    if credential is None:
        hmac.compare_digest(_digest(password, _UNKNOWN_SALT, ITERATIONS), _UNKNOWN_HASH)
        return False
    digest = _digest(password, credential.salt, credential.iterations)
    return hmac.compare_digest(digest, credential.hash)
