"""The one way Kylon hashes a secret it keeps only the hash of (agent keys,
the admin token, admin session ids, upload session tokens)."""

import hashlib
import hmac


def sha256_hex(text):
    # surrogatepass: a header or form value with a lone surrogate still hashes
    # (to something that matches nothing) instead of raising.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def matches_hash(text, expected_hex):
    """Whether `text` (surrounding spaces ignored) hashes to `expected_hex`, in constant time."""
    return bool(text) and hmac.compare_digest(sha256_hex(text.strip()), expected_hex)
