"""Claude on Google Vertex AI, behind Anthropic's own request shape.

The client sends a plain Anthropic Messages call to
`/proxy/anthropic-vertex/v1/messages`; Kylon does what the SDK's AnthropicVertex
client would: `model` moves from the body into the URL
(`…/publishers/anthropic/models/{model}:rawPredict`, `:streamRawPredict` for
streams; token counting goes to `…/models/count-tokens:rawPredict` with the
model kept in the body), `anthropic_version: "vertex-2023-10-16"` goes into the
body when absent, and the call carries a Google OAuth2 access token.

Configuration:
  KYLON_VERTEX_PROJECT            the Google Cloud project (required)
  KYLON_VERTEX_REGION             default "global", the endpoint serving the
                                  current Claude models; older models need a
                                  region such as "us-east5"
  KYLON_VERTEX_BASE_URL           default derived from the region, as the SDK does
  KYLON_VERTEX_ACCESS_TOKEN       a static access token (tests, simple set-ups);
                                  wins over the service account when both are set
  GOOGLE_APPLICATION_CREDENTIALS  a service-account JSON file: tokens are minted
                                  with google-auth and refreshed before expiry

Answers, streams and usage are Anthropic's, read by the anthropic module.
"""

import asyncio
import datetime
import logging
import re
import time
from dataclasses import dataclass

from tornado.ioloop import IOLoop

from ..prices import table
from . import anthropic
from .base import Provider, Route

log = logging.getLogger("kylon.providers.vertex")

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
DEFAULT_REGION = "global"
# Vertex model ids: claude-sonnet-4-5@20250929. Anything else could reshape the URL.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*\Z")


def vertex_base_url(region):
    """The SDK's choice of host for a region."""
    if region == "global":
        return "https://aiplatform.googleapis.com"
    if region in ("us", "eu"):
        return f"https://aiplatform.{region}.rep.googleapis.com"
    return f"https://{region}-aiplatform.googleapis.com"


@dataclass
class VertexRoute(Route):
    # True for Messages: the model goes into the URL (so it must be a Vertex
    # model id). Token counting keeps it in the body and calls "count-tokens".
    model_in_url: bool = True


def vertex_body(exchange, body):
    """The Anthropic body as Vertex wants it: the model is in the URL (except for
    token counting), the API version in the body."""
    if exchange.route.model_in_url:
        body.pop("model", None)
    body.setdefault("anthropic_version", VERTEX_ANTHROPIC_VERSION)
    return True



class AccessTokens:
    """The service account's access token. google-auth's refresh is a blocking
    HTTP call, so it runs on a thread; it starts REFRESH_AHEAD before expiry
    while calls go on with the current token, and calls wait only when the
    token has (nearly) run out."""

    REFRESH_AHEAD = 300.0
    MUST_REFRESH = 30.0

    def __init__(self, credentials):
        self.credentials = credentials
        self.token = None
        self.expires_at = 0.0  # time.monotonic()
        self._refreshing = None
        self._transport = None

    async def current(self):
        """A usable token, or None when Google would not give one."""
        remaining = self.expires_at - time.monotonic()
        if remaining < self.REFRESH_AHEAD:
            if self._refreshing is None:
                self._refreshing = asyncio.ensure_future(self._refresh())
            if remaining < self.MUST_REFRESH:
                await asyncio.shield(self._refreshing)
        return self.token if self.expires_at > time.monotonic() else None

    async def _refresh(self):
        try:
            token, lifetime = await IOLoop.current().run_in_executor(None, self._mint)
            self.token, self.expires_at = token, time.monotonic() + lifetime
        except Exception as e:
            log.error("could not refresh the Vertex AI access token: %s", type(e).__name__)
        finally:
            self._refreshing = None

    def _mint(self):
        """On a thread: a new token from Google, and its lifetime in seconds."""
        from google.auth.transport.requests import Request

        if self._transport is None:
            self._transport = Request()
        self.credentials.refresh(self._transport)
        expiry = self.credentials.expiry
        if expiry is None:
            return self.credentials.token, 3600.0
        now = datetime.datetime.now(datetime.timezone.utc)
        if expiry.tzinfo is None:  # google-auth keeps naive UTC
            now = now.replace(tzinfo=None)
        return self.credentials.token, (expiry - now).total_seconds()


class AnthropicVertex(Provider):
    name = "anthropic-vertex"
    base_url_env = "KYLON_VERTEX_BASE_URL"
    client_key_headers = ("x-api-key", "authorization")
    # Vertex takes the version in the body; the SDK sends no such header there.
    drop_request_headers = ("anthropic-version",)
    # Anthropic's id when Vertex passes it on, else Google's.
    upstream_id_headers = ("request-id", "x-goog-request-id")
    # Anthropic's routes (anthropic.MESSAGE_ROUTES), their bodies reshaped for Vertex.
    routes = [
        VertexRoute(r"/v1/messages", "messages", read_usage=anthropic.message_usage,
                    on_event=anthropic.message_event, rewrite=vertex_body),
        VertexRoute(r"/v1/messages/count_tokens", "messages.count_tokens", read_usage=anthropic.no_usage,
                    rewrite=vertex_body, model_in_url=False),
    ]
    # Anthropic's list prices (the global endpoint's): kylon/prices.json.
    prices = table("anthropic-vertex")
    fallback_price = prices.fallback

    def configure(self, env):
        self.project = env.get("KYLON_VERTEX_PROJECT") or None
        self.region = env.get("KYLON_VERTEX_REGION") or DEFAULT_REGION
        self.base_url = (env.get(self.base_url_env) or vertex_base_url(self.region)).rstrip("/")
        self.static_token = env.get("KYLON_VERTEX_ACCESS_TOKEN") or None
        self.credentials_file = env.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        self.credentials_error = None
        self.tokens = None
        if self.credentials_file and not self.static_token:
            # At start-up, before serving: reading the file may block.
            try:
                from google.oauth2 import service_account

                credentials = service_account.Credentials.from_service_account_file(
                    self.credentials_file, scopes=SCOPES
                )
                self.tokens = AccessTokens(credentials)
            except Exception as e:
                self.credentials_error = f"{type(e).__name__}: {e}"
                log.error("GOOGLE_APPLICATION_CREDENTIALS could not be used: %s", self.credentials_error)

    def missing_configuration(self):
        missing = []
        if not self.project:
            missing.append("KYLON_VERTEX_PROJECT")
        if self.credentials_error:
            # The details (a file path) are for the operator's log, not the agent.
            missing.append("GOOGLE_APPLICATION_CREDENTIALS to a readable service-account key file")
        elif not (self.static_token or self.tokens):
            missing.append("GOOGLE_APPLICATION_CREDENTIALS (or KYLON_VERTEX_ACCESS_TOKEN)")
        return f"Provider '{self.name}' is not configured on this Kylon: set {' and '.join(missing)}."

    @property
    def configured(self):
        return bool(self.project and (self.static_token or self.tokens))

    def upstream_query(self, query):
        # The model and method are the whole Vertex URL; `?beta=true` has no place there.
        return ""

    def upstream_url(self, exchange):
        if exchange.route.model_in_url:
            method = "streamRawPredict" if exchange.stream else "rawPredict"
            model = exchange.model
        else:
            method, model = "rawPredict", "count-tokens"
        return (
            f"{self.base_url}/v1/projects/{self.project}/locations/{self.region}"
            f"/publishers/anthropic/models/{model}:{method}"
        )

    async def ready(self, exchange):
        if exchange.route.model_in_url and not _MODEL_ID.match(exchange.model):
            return 400, "model: a Vertex AI Claude model id is required (e.g. claude-sonnet-4-5@20250929)."
        if not self.static_token and await self.tokens.current() is None:
            return 502, "Kylon could not obtain a Google access token for Vertex AI."
        return None

    def auth_headers(self):
        # Called right after ready(), which made sure the token is usable.
        return {"Authorization": f"Bearer {self.static_token or self.tokens.token}"}

    def error_body(self, status, message, code=None):
        return anthropic.anthropic_error_body(status, message, code)


provider = AnthropicVertex()
