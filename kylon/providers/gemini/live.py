"""Gemini's Live API: `BidiGenerateContent` over a WebSocket, as
google-genai's `client.aio.live.connect()` opens it
(`/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent`,
its key in `x-goog-api-key`).

The client's first message is `setup` (it names the model); the server
answers `setupComplete`, then `serverContent` (model turn parts: text, or
inline audio), `turnComplete`, tool calls. A server message may carry
`usageMetadata`: the figures of the turn under way (each turn's prompt
counts the conversation so far, as Google bills it), repeated and growing
within a turn; the session's usage is the sum of its turns, each at its
last figures. Field names differ from generateContent's: `responseTokenCount`
and `responseTokensDetails` are the output.

The ephemeral-token variant (`…BidiGenerateContentConstrained`, a token
from `auth_tokens`) authenticates with Google's token, not a Kylon key: not
relayed.
"""

from ...billing import Usage, added
from ..base import SocketRoute, json_or_none, member

PATH = r"/ws/google\.ai\.generativelanguage\.v1(?:beta|alpha)?\.GenerativeService\.BidiGenerateContent"
# Held while a session is open, on top of what it used: one more turn's
# prompt and answer.
HOLD = Usage(input_tokens=8192, output_tokens=4096)


def live_usage(meta):
    """A Live `usageMetadata` as a Usage, read as generateContent's is."""
    meta = dict(meta)
    meta.setdefault("candidatesTokenCount", meta.get("responseTokenCount"))
    meta.setdefault("candidatesTokensDetails", meta.get("responseTokensDetails"))
    from . import gemini_usage  # (here: the package imports this module before defining it)

    return gemini_usage({"usageMetadata": meta})


class LiveMeter:
    """A session's usage: the turns complete, plus the one under way."""

    def __init__(self, exchange):
        self.exchange = exchange
        self.finished = Usage()  # the turns complete
        self.turn = None  # the last figures of the turn under way
        # The turn under way has ended (turnComplete): the next figures are a new turn's.
        self.turn_complete = False
        self.total = None

    def client_message(self, message):
        if self.exchange.model:
            return
        model = member(member(json_or_none(message), "setup"), "model")
        if isinstance(model, str):
            self.exchange.model = model.removeprefix("models/")

    def upstream_message(self, message):
        data = message.encode("utf-8") if isinstance(message, str) else message
        has_usage = b'"usageMetadata"' in data
        if not has_usage and b'"turnComplete"' not in data:
            return
        parsed = json_or_none(data)
        meta = member(parsed, "usageMetadata")
        if isinstance(meta, dict):
            if self.turn is not None and self.turn_complete:
                self.finished = added(self.finished, self.turn)
                self.turn_complete = False
            self.turn = live_usage(meta)
            self.total = added(self.finished, self.turn)
        if member(member(parsed, "serverContent"), "turnComplete") is True:
            self.turn_complete = True

    def usage(self):
        return self.total


ROUTES = [SocketRoute(PATH, "live", meter=LiveMeter, hold=lambda exchange: HOLD, model_in_first_message=True)]
