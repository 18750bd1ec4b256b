"""`GET /proxy/elevenlabs/v1/convai/conversation/get-signed-url?agent_id=`
(and the older `get_signed_url`), answered by Kylon itself: a URL back to
Kylon's conversation WebSocket carrying a Kylon ticket for the caller's key
(realtime.py), so the SDK's `Conversation(requires_auth=True)` works through
Kylon. Nothing goes upstream, and the call is free: the conversation it
leads to is metered and gated like any other (`operator:unmetered`)."""

from urllib.parse import quote

from ...billing import Usage
from ...calls.admission import Refusal
from ...digest import sha256_hex
from ...handlers.proxy import ProxyHandler
from ...models import UsageStatus
from .realtime import SIGNATURE_PARAM, conversation_ticket

CONVERSATION_PATH = "/v1/convai/conversation"


class ConversationUrlHandler(ProxyHandler):
    async def forward(self):
        if self._finished:
            return
        self.exchange.make_free()
        agent_id = self.get_query_argument("agent_id", "")
        if not agent_id:
            return self.reject(Refusal(400, "'agent_id' is required.", "body"))
        provider = self.provider
        ticket = conversation_ticket(provider, sha256_hex(provider.client_key(self.request)), agent_id)
        base = self.kylon_base().replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        url = (f"{base}/proxy/{provider.name}{CONVERSATION_PATH}?agent_id={quote(agent_id, safe='')}"
               f"&{SIGNATURE_PARAM}={ticket}")
        self.record(UsageStatus.COMPLETED, 200, Usage())
        self.write_json({"signed_url": url})
