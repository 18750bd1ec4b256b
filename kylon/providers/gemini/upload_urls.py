"""`POST /proxy/gemini/files/upload-urls`: a resumable upload started per
file, and the URLs to send their bytes to (docs/gemini-helpers.md).

A call of several upstream calls: each start goes through the proxy's own
`call_upstream`, and any start that fails ends the call through the proxy's
own `finish_call` (outcome, metrics, the usage record)."""

import json
import time

from ... import relay
from ...billing import Usage
from ...models import UsageStatus
from .uploads import GeminiHandler

UPLOAD_PATH = "/upload/v1beta/files"


class UploadUrlsHandler(GeminiHandler):
    async def forward(self):
        if self._finished:
            return
        exchange = self.exchange
        body = b"".join(self.body_chunks)
        self.body_chunks = None
        exchange.request_bytes = len(body)
        body, refusal = self.read_json(body)
        if refusal is not None:
            return self.reject(refusal)
        # Starting uploads costs nothing, whatever becomes of the call.
        exchange.make_free()
        provider = self.provider
        answers = []
        for item in exchange.request_json["files"]:
            headers = await self.start_upload(item)
            if headers is None:
                return
            upstream_url = headers.get("X-Goog-Upload-URL")
            if not upstream_url:
                message = "The upstream started no upload session (no X-Goog-Upload-URL)."
                self.record(UsageStatus.ERROR, 502, Usage(), error=message)
                return self.send_kylon_error(502, message)
            if provider.direct_upload_urls:
                url, expires_at = upstream_url, None
            else:
                url, expires_at, write = self.new_upload_session(upstream_url, UPLOAD_PATH)
                await write
            answers.append(upload_answer(item, url, expires_at))
        self.record(UsageStatus.COMPLETED, 200, Usage())
        self.write_json({"files": answers, "direct": provider.direct_upload_urls})

    async def start_upload(self, item):
        """One resumable start upstream: its answer's headers, or None once the
        call has ended (an upstream error, a time-out, the client gone)."""
        provider = self.provider
        metadata = {"file": {"mimeType": item["mime_type"], "sizeBytes": str(item["size_bytes"])}}
        if item.get("display_name"):
            metadata["file"]["displayName"] = item["display_name"]
        headers = {
            **provider.auth_headers(),
            "Content-Type": "application/json",
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(item["size_bytes"]),
            "X-Goog-Upload-Header-Content-Type": item["mime_type"],
        }
        answer = {}
        chunks = []

        def arrived(status, response_headers):
            if self.call.first_byte_at is None:
                self.call.first_byte_at = time.monotonic()
            self.exchange.response_headers = answer["headers"] = response_headers

        transfer = await self.call_upstream(
            "POST", provider.base_url + UPLOAD_PATH, headers, json.dumps(metadata).encode("utf-8"),
            arrived, chunks.append,
        )
        status = self.upstream.status or 0
        if transfer == relay.COMPLETED and not self.client_gone and not self.interrupted and status < 400:
            return answer["headers"]
        if transfer == relay.COMPLETED and status >= 400 and not self.client_gone:
            # Gemini's own error, as Gemini said it.
            self.set_status(status)
            self.set_header("Content-Type", answer["headers"].get("Content-Type") or "application/json")
            self.write(b"".join(chunks))
        self.finish_call(transfer)
        return None


def upload_answer(item, url, expires_at):
    return {
        "display_name": item.get("display_name"),
        "mime_type": item["mime_type"],
        "size_bytes": item["size_bytes"],
        "upload_url": url,
        "upload_method": "POST",
        "upload_headers": {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
        "expires_at": expires_at.isoformat() + "Z" if expires_at else None,
    }
