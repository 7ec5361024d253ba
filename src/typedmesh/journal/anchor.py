"""Head signatures: an HMAC over a run's head, so a forger who recomputed every hash is caught.

With ``TYPEDMESH_JOURNAL_KEY`` set, every append signs the new head (run id,
last seq, last hash) and ``verify`` refuses a head whose signature is missing
or wrong. Without a key, the anchored head still catches a cut tail; only a
writer with database access who also rewrites the head can forge a run.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["KEY_ENV", "journal_key", "sign_head", "signature_ok"]

KEY_ENV = "TYPEDMESH_JOURNAL_KEY"


def journal_key() -> bytes | None:
    """The signing key from the environment, or None when heads are not signed."""
    value = os.environ.get(KEY_ENV)
    return value.encode() if value else None


def sign_head(key: bytes | None, run_id: str, seq: int, head_hash: str) -> str | None:
    if key is None:
        return None
    message = f"{run_id}\n{seq}\n{head_hash}".encode()
    return "hmac-sha256:" + hmac.new(key, message, hashlib.sha256).hexdigest()


def signature_ok(
    key: bytes | None, run_id: str, seq: int, head_hash: str, signature: str | None
) -> bool:
    """True when no key is set, or ``signature`` is the key's signature of the head."""
    if key is None:
        return True
    expected = sign_head(key, run_id, seq, head_hash)
    return (
        signature is not None and expected is not None and hmac.compare_digest(expected, signature)
    )
