"""Upload sessions Kylon started upstream for a key (Gemini's resumable uploads).

The client then sends its bytes to a Kylon URL that carries no Kylon key, only
the session's token; the session says which key (hence agent) it stands for
and where upstream the bytes go. Kept in the database so that any Kylon process
sharing it can take the bytes.
"""

import peewee

from .base import BaseModel, utcnow


class UploadSession(BaseModel):
    # SHA-256 of the token in the upload URL Kylon handed out (never the token).
    token_hash = peewee.CharField(max_length=64, unique=True)
    provider = peewee.CharField(max_length=50)
    # The Kylon key that started the upload (ApiKey.key_hash), checked again
    # on every chunk: a revoked key ends its uploads too.
    key_hash = peewee.CharField(max_length=64)
    upstream_url = peewee.TextField()
    created_at = peewee.DateTimeField(default=utcnow)
    expires_at = peewee.DateTimeField(index=True)
