"""Gemini's resumable uploads through Kylon (SPEC §7).

The start (`POST /upload/v1beta/files`, with a Kylon key) is relayed;
upstream answers with the session URL in `X-Goog-Upload-URL`. Kylon keeps
that URL in an UploadSession row and hands the client a URL under
`/proxy/gemini/upload/…?upload_id=<token>` instead. The client's SDK sends
the bytes there with no key at all: the token names the session, the session
the key, and the bytes go on, opaque, to the real session URL with the
operator's key.
"""

import asyncio
import datetime
import logging
import secrets

from ...digest import sha256_hex
from ...handlers.proxy import ProxyHandler
from ...models import UploadSession, utcnow

log = logging.getLogger("kylon.gemini")

SESSION_TOKEN_PREFIX = "kus_"
# Another Kylon process may have handed out a session URL a moment ago and
# still be writing its row: a chunk that finds none looks once more after this.
SESSION_RETRY_SECONDS = 0.3


# -- upload sessions (database thread) ---------------------------------------


def _save_session(digest, provider, key_hash, upstream_url, expires_at):
    now = utcnow()
    # Expired sessions go as new ones come: the table stays small.
    UploadSession.delete().where(UploadSession.expires_at < now).execute()
    UploadSession.create(
        token_hash=digest, provider=provider, key_hash=key_hash, upstream_url=upstream_url, expires_at=expires_at
    )


def _find_session(digest, provider):
    return UploadSession.get_or_none(
        (UploadSession.token_hash == digest)
        & (UploadSession.provider == provider)
        & (UploadSession.expires_at > utcnow())
    )


def _end_session(digest):
    UploadSession.delete().where(UploadSession.token_hash == digest).execute()


def _log_failure(future):
    if not future.cancelled() and future.exception() is not None:
        log.warning("upload session bookkeeping failed: %s", future.exception())


class GeminiHandler(ProxyHandler):
    """What Gemini's own handlers share: upload sessions."""

    def new_upload_session(self, upstream_url, path):
        """Remember an upload session upstream opened for this call's key; returns
        (the URL under Kylon the client sends its bytes to, expiry, the
        database write)."""
        token = SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)
        provider = self.provider
        expires_at = utcnow() + datetime.timedelta(seconds=provider.upload_session_seconds)
        # Only keyed calls start sessions (a chunk never does).
        key_hash = sha256_hex(provider.client_key(self.request))
        write = self.services.db.run(_save_session, sha256_hex(token), provider.name, key_hash, upstream_url, expires_at)
        url = f"{self.kylon_base()}/proxy/{provider.name}{path}?upload_id={token}&upload_protocol=resumable"
        return url, expires_at, write


class GeminiUploadHandler(GeminiHandler):
    """`/proxy/gemini/upload/…`: the resumable upload protocol.

    A call with `upload_id` in its query is a chunk of a session Kylon started
    (it carries no key); any other call is an ordinary keyed call (the start)."""

    key_refusal_messages = {"session": "Unknown or expired upload session: start the upload again through Kylon."}

    def initialize(self):
        super().initialize()
        self.session = None
        self.session_token = None

    def error_headers(self):
        # Kylon's refusal of a chunk ends the upload: without an upload status a
        # resumable client (google-genai) would retry the same refusal.
        return {"X-Goog-Upload-Status": "final"} if self.session_token is not None else {}

    async def authenticate(self):
        values = self.request.query_arguments.get("upload_id")
        if not values:
            return await super().authenticate()
        self.session_token = values[0].decode("utf-8", "replace")
        session = None
        if self.session_token.startswith(SESSION_TOKEN_PREFIX):
            digest = sha256_hex(self.session_token)
            session = await self.services.db.run(_find_session, digest, self.provider.name)
            if session is None:
                await asyncio.sleep(SESSION_RETRY_SECONDS)
                session = await self.services.db.run(_find_session, digest, self.provider.name)
        if session is None:
            return None, "session"
        self.session = session
        # The chunk's bytes go to the session URL upstream gave.
        self.exchange.upstream_url = session.upstream_url
        return await self.services.cache.lookup_hash(session.key_hash)

    def shape_response_headers(self, status, headers):
        if self.session is not None:
            if (headers.get("X-Goog-Upload-Status") or "").lower() == "final":
                self.services.db.run(_end_session, sha256_hex(self.session_token)).add_done_callback(_log_failure)
        elif status < 300 and headers.get("X-Goog-Upload-URL") and not self.client_gone:
            self.hand_out_session(headers)

    def hand_out_session(self, headers):
        """The start's answer names Kylon's URL for the bytes, not upstream's."""
        upstream_url = headers["X-Goog-Upload-URL"]
        url, _, write = self.new_upload_session(upstream_url, self.exchange.path)
        # Queued on the database thread before the client can see the URL,
        # so this process finds it; other processes a moment later.
        write.add_done_callback(_log_failure)
        headers["X-Goog-Upload-URL"] = url
        control = headers.get("X-Goog-Upload-Control-URL")
        if control == upstream_url:
            headers["X-Goog-Upload-Control-URL"] = url
        elif control:
            del headers["X-Goog-Upload-Control-URL"]
        # Upstream's own session id: the bytes go through Kylon's URL only.
        if "X-GUploader-UploadID" in headers:
            del headers["X-GUploader-UploadID"]
