"""What a provider module declares, and the shared machinery that reads it.

A provider module defines one `Provider` subclass instance named `provider`:
its name (the `/proxy/<name>` prefix), where its credential comes from, its
base URL and API path, its routes, how to read usage from a response body and
from stream events, its default prices and its error shape. The relay,
metering and billing are shared by all providers.
"""

import json
import re
from decimal import Decimal
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qsl, unquote, urlencode

from ..billing import Price, Usage
from ..errors import openai_error_body


# Query parameters that may carry a credential on any API: never logged.
SECRET_QUERY_PARAMS = ("key", "api_key", "access_token", "token")
# How body_problem names the types of checked_fields.
TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer"}
# More output tokens, or copies of an answer, than any provider gives one call:
# a larger figure is refused (400) rather than held.
MAX_TOKENS = 10**8
MAX_COPIES = 10**8


@dataclass
class Route:
    """One upstream API call a provider offers.

    path: a regular expression matched against the path after `/proxy/<name>`.
    name: the route's label in usage records and metrics.
    body: "json" (parsed: model, stream flag, rewrites) or "raw" (opaque bytes).
    read_usage: the parsed JSON answer -> Usage or None (non-streaming answers).
        Any JSON value comes here (Gemini streams without alt=sse answer an
        array), so it reads with `member`, which yields None on a non-object.
    on_event: (Exchange, sse.Event) -> bool, called for every SSE event of a
        streamed answer; it records usage on the Exchange and says whether the
        event goes on to the client.
    rewrite: (Exchange, request JSON) -> True when it changed the request;
        a ValueError refuses the request (400, its message).
    answer: (Exchange, upstream JSON, Usage, credits) -> the JSON the client
        gets instead of the upstream's (Kylon's own helper routes, filtered
        model listings), or None to let the upstream's answer go as it came.
    models: what the route does with models, for the allow-lists
        (docs/controls.md): "call" (it calls the model the request names; a
        model not allowed, or one Kylon cannot tell, is refused), "list" (it
        lists models: the answer is filtered), "get" (it describes the model
        its path names, the group `(?P<model>…)` of `path`: 404 when not
        allowed), "" (no model involved).

    What only this route does, called by the Provider's method of the same
    name (each optional):
    prepare: (Exchange, body bytes) -> the body sent upstream (a raw body's
        fields are read here; for a streamed upload, its first part only).
    hold: Exchange -> the Usage held against the balance while the call runs.
    usage_from_headers: (Exchange, response headers) -> Usage or None.
    free: the call costs nothing: its usage is final at zero before it goes
        upstream, whatever becomes of the transfer, and it holds nothing.
    read_answer: (Exchange, the parsed JSON answer) -> None: notes what the
        answer says of the stored object it carries (an OpenAI response).
    lifecycle: the route's part in a stored response's life (kylon/responses.py):
        "create" binds the id its answer shows to the calling agent; "use" and
        "delete" name one in the path (the pattern's first group), "refer"
        (and "create") may name one in the body (`previous_response_id`);
        a named one must be the calling agent's, else 404 with nothing sent
        upstream.
    """

    path: str
    name: str
    methods: tuple = ("POST",)
    body: str = "json"
    read_usage: Callable | None = None
    on_event: Callable | None = None
    rewrite: Callable | None = None
    answer: Callable | None = None
    prepare: Callable | None = None
    hold: Callable | None = None
    usage_from_headers: Callable | None = None
    free: bool = False
    read_answer: Callable | None = None
    lifecycle: str = ""
    models: str = "call"

    def __post_init__(self):
        self.pattern = re.compile(self.path + r"\Z")


@dataclass
class SocketRoute:
    """One WebSocket API a provider offers. The relay is shared by all of them
    (kylon/handlers/sockets.py and kylon/relay/websocket.py, docs/websockets.md):
    the client's Kylon key (`Provider.client_key`: a header or `?key=`), the
    gate and the credits are checked before the upgrade; frames pass both
    ways as they arrive, one at a time (a slow side holds the other back);
    the session holds credits while open, its hold grows with what it has
    used, and it is closed with code 4402 when that reaches what the agent
    has; it leaves one usage record (frames each way, duration, usage).

    path: a regular expression matched against the path after `/proxy/<name>`.
    name: the route's label in usage records and metrics.
    meter: Exchange -> the session's meter, an object with
        client_message(message) and upstream_message(message): called with
        every frame, each way, before it is passed on (a str for a text
        frame, bytes for a binary one); either may set `exchange.model`;
        client_message may return the frame to send upstream instead (None:
        the frame as it is); usage(): the session's cumulative billing.Usage
        so far (None while nothing is known; a new object whenever it
        changed). Read after every frame and once a second (a meter may bill
        by time). The factory runs before the upgrade, with `exchange.path`
        and `exchange.query` (the upstream's) set: a model named in the URL
        is read there, so the hold is priced at it.
    hold: Exchange -> the Usage held against the balance while the session
        is open, on top of what it has used (None: nothing beyond its use).
    upstream_path: Exchange -> the path sent upstream (default: the client's).
    upstream_query: (Exchange, query) -> the query string sent upstream
        (default: the provider's `upstream_query`; Kylon keys never go).
    authenticate: the SocketHandler -> awaitable (KeyEntry, AgentEntry), or
        (None, reason) to refuse, or None to take the client's key as usual:
        a session standing on something Kylon issued to a key (ElevenLabs'
        signed conversation URLs).
    model_in_first_message: the client's first message names the model
        (Gemini's setup): the upstream is connected, and the call admitted at
        the model's price, once that message is in; else right after the upgrade.

    The operator's credential goes upstream as the provider's `auth_headers`
    say; a provider lists its routes in `socket_routes`.
    """

    path: str
    name: str
    meter: Callable
    hold: Callable | None = None
    upstream_path: Callable | None = None
    upstream_query: Callable | None = None
    model_in_first_message: bool = False
    authenticate: Callable | None = None

    def __post_init__(self):
        self.pattern = re.compile(self.path + r"\Z")


@dataclass
class Exchange:
    """One proxied call as the provider module sees it: what was asked, and
    what has been learnt from the answer so far."""

    request_id: str
    route: Route
    path: str
    query: str = ""
    model: str = ""
    # The name the call is priced under when a price depends on more than the
    # model (an image's size and quality: "dall-e-3 hd 1024x1792"); "" = model.
    price_model: str = ""
    stream: bool = False
    request_json: dict | None = None
    request_bytes: int = 0
    usage: Usage | None = None
    # True once `usage` holds the provider's final figures for the call.
    usage_final: bool = False
    # True once the stream's own end marker went by (OpenAI's `[DONE]`,
    # Anthropic's message_stop): a client leaving after it had the whole answer.
    stream_done: bool = False
    # An error the provider reported inside an answer that began with HTTP 200
    # (an error event or chunk mid-stream): the call is recorded as upstream_error.
    stream_error: str = ""
    # Set by a rewrite that asked upstream for something the client did not
    # (OpenAI's stream usage chunk): that part of the answer is kept from it.
    hide_usage_chunk: bool = False
    # Streamed content events seen so far: the output estimate (one token each)
    # when a stream ends before the provider reports usage.
    output_events: int = 0
    response_headers: object = None
    # The usage fields a stream reported so far, field by field (Anthropic's
    # message_start, then message_delta superseding what it repeats).
    usage_fields: dict = field(default_factory=dict)
    # Where the call goes instead of base URL + path, query and all (a Gemini
    # resumable upload's byte chunks go to the session URL upstream gave).
    upstream_url: str = ""
    # A stored response the request names (the path, or the body's
    # `previous_response_id`): it must be the calling agent's.
    named_object: str = ""
    # What the answer showed of the response it carries: id, status, usage.
    object_id: str = ""
    object_status: str = ""
    object_usage: Usage | None = None
    # A Responses create with `background` true; with `store` not false.
    background: bool = False
    stored: bool = False
    # On a model listing under an allow-list: model name -> whether the key
    # may call it (admission.model_filter); None = any model.
    model_allowed: Callable | None = None

    def make_free(self):
        """Nothing to bill: usage final at zero, whatever becomes of the transfer."""
        self.usage, self.usage_final = Usage(), True


class Provider:
    name = ""
    api_key_env = ""
    base_url_env = ""
    default_base_url = ""
    # Prepended to the client's path upstream (OpenRouter: "/api").
    upstream_prefix = ""
    # Request headers in which the client's SDK sends its key (lower case).
    client_key_headers = ("authorization", "x-api-key")
    # Request headers never forwarded (besides hop-by-hop and all client keys).
    drop_request_headers = ()
    # Request headers sent upstream when the client sent none (Anthropic's
    # anthropic-version).
    default_request_headers: dict = {}
    # Response headers from upstream never passed to the client.
    drop_response_headers = ("set-cookie",)
    routes: list = []
    # WebSocket APIs (SocketRoute), relayed by kylon/handlers/sockets.py.
    socket_routes: list = []
    # Paths not in `routes` pass through as opaque calls when True (Gemini, ElevenLabs).
    passthrough = False
    prices: dict = {}
    fallback_price = Price()
    # Gates shipped with the provider: route prefix ("" for all) -> skill,
    # written once into each database (kylon/gates.py, docs/gates.md).
    default_gates: dict = {}
    # Shipped gates a later release took back: route -> the skill shipped.
    retired_gates: dict = {}
    # Fields Kylon itself reads from a JSON request body, and the type each
    # must have (a wrong type is refused with 400 before anything goes upstream).
    checked_fields = {"model": str, "stream": bool, "max_tokens": int}
    # The range each integer of checked_fields must be in (after its type).
    bounded_fields = {"max_tokens": (0, MAX_TOKENS)}
    # Query parameters of this provider's URLs that carry a secret, besides
    # SECRET_QUERY_PARAMS: the access log never shows their values.
    secret_query_params = ()
    # Response headers holding the upstream's own id of the call, in order of
    # preference: kept in the usage record (upstream_request_id).
    upstream_id_headers = ("x-request-id",)

    def __init__(self):
        self.api_key = None
        self.base_url = None
        self.public_url = ""

    def get_handlers(self):
        """URL rules of the provider's own handlers (Gemini's uploads and
        helpers), matched before the generic proxy rule."""
        return []

    # -- configuration ----------------------------------------------------
    def configure(self, env):
        self.api_key = env.get(self.api_key_env) or None
        self.base_url = (env.get(self.base_url_env) or self.default_base_url).rstrip("/")
        # Where clients reach Kylon (https://kylon.example.com), for the URLs
        # Kylon hands out (Gemini uploads, ElevenLabs conversations); by
        # default the scheme and host of the request.
        self.public_url = (env.get("KYLON_PUBLIC_URL") or "").rstrip("/")

    @property
    def configured(self):
        return bool(self.api_key)

    def missing_configuration(self):
        return f"Provider '{self.name}' is not configured on this Kylon: set {self.api_key_env}."

    # -- request ------------------------------------------------------------
    def match(self, path, method):
        """(route, allowed) for a path: the route, or None for pass-through
        paths; allowed False when the path exists but not for this method.
        Several routes may share a path, one per method (retrieve, delete)."""
        found = None
        for route in self.routes:
            if route.pattern.match(path):
                if method in route.methods:
                    return route, True
                found = found or route
        if found is not None:
            return found, False
        return None, self.passthrough

    def path_model(self, route, path):
        """The model a call's path names (the route's `(?P<model>…)` group),
        known before the body is read; None when the path names none."""
        if route is not None and "model" in route.pattern.groupindex:
            return unquote(route.pattern.match(path).group("model"))
        return None

    def client_key(self, request):
        return key_from_headers(request, self.client_key_headers)

    def upstream_url(self, exchange):
        if exchange.upstream_url:
            return exchange.upstream_url
        url = self.base_url + self.upstream_prefix + exchange.path
        if exchange.query:
            url += "?" + exchange.query
        return url

    def upstream_query(self, query):
        """The query string sent upstream (Gemini drops its `key=`)."""
        return query

    def auth_headers(self):
        return {"Authorization": f"Bearer {self.api_key}"}

    async def ready(self, exchange):
        """Called before each upstream call; may await (Vertex refreshes its
        access token off the IOLoop here). Returns None, or (status, message)
        to refuse the call."""
        return None

    def body_problem(self, body):
        """A clear message when a field of `checked_fields` has the wrong type
        or one of `bounded_fields` is out of its range, else None."""
        for name, wanted in self.checked_fields.items():
            value = body.get(name)
            if value is not None and type(value) is not wanted:
                return f"'{name}' must be {TYPE_NAMES[wanted]}."
        for name, (low, high) in self.bounded_fields.items():
            problem = range_problem(name, body.get(name), low, high)
            if problem:
                return problem
        return None

    def prepare_request(self, exchange, body):
        """Final say on the upstream body (bytes) once the JSON rewrite ran:
        the route's `prepare`; a free route's usage is settled here."""
        route = exchange.route
        if route is None:
            return body
        if route.free:
            exchange.make_free()
        return route.prepare(exchange, body) if route.prepare is not None else body

    # Output tokens held for a call that names no maximum.
    default_hold_output_tokens = 4096

    def hold_usage(self, exchange):
        """The most a call is likely to consume, held against the balance while it
        runs: the route's `hold`, else its input (about 4 bytes a token) and its
        maximum output. A call already final at zero (a free one: an upload
        chunk of megabytes, countTokens) holds nothing from the agent's others."""
        if exchange.usage_final:
            return Usage()
        if exchange.route is not None and exchange.route.hold is not None:
            return exchange.route.hold(exchange)
        limit = self.output_limit(exchange.request_json or {})
        output = self.default_hold_output_tokens if limit is None else max(limit, 0)
        return Usage(input_tokens=exchange.request_bytes // 4, output_tokens=output, units=Decimal(1))

    # The request fields that cap a call's output tokens, the first set one wins.
    output_limit_fields = ("max_tokens",)

    def output_limit(self, body):
        """The most output tokens a JSON request body allows, or None."""
        for name in self.output_limit_fields:
            if isinstance(body.get(name), int):
                return body[name]
        return None

    # -- response -------------------------------------------------------------
    def error_body(self, status, message, code=None):
        """The body of an error Kylon itself returns on this provider's routes,
        in the shape the provider's SDK parses (OpenAI's unless overridden)."""
        return openai_error_body(status, message, code)

    def usage_from_headers(self, exchange, headers):
        """Usage known from the response headers alone (the route's hook), or None."""
        route = exchange.route
        if route is not None and route.usage_from_headers is not None:
            return route.usage_from_headers(exchange, headers)
        return None


def key_from_headers(request, headers=("authorization", "x-api-key")):
    """The Kylon key a request carries in the first of `headers` it has
    (`Authorization: Bearer …`, or the key itself), or None."""
    for header in headers:
        value = request.headers.get(header)
        if value:
            if header == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    continue
                value = token.strip()
            return value.strip()
    return None


# -- model listings ------------------------------------------------------------

# The largest page the providers' model listings give (Anthropic's `limit`,
# Gemini's `pageSize`): asked for under an allow-list, so that the filtered
# answer is one page of all the key may call, not pages emptied by the filter
# (the SDKs stop at an empty page).
LISTING_PAGE_MAX = 1000


@dataclass(frozen=True)
class ModelListing:
    """A provider's model listing, filtered to what the key may call
    (Exchange.model_allowed) in the provider's own shape: the entries under
    `items`, each named by `name` (less `prefix`: Gemini's `models/`);
    `cursors`, Anthropic's first_id/last_id, follow the entries kept;
    `page_size` is the query parameter of the page's size."""

    items: str = "data"
    name: str = "id"
    prefix: str = ""
    cursors: bool = False
    page_size: str = ""

    def routes(self, list_path, get_path=None):
        """The listing's routes (GET, free): the list, and the retrieve of one
        model where the provider has it (`get_path` with a `(?P<model>…)` group)."""
        routes = [Route(list_path, "models.list", methods=("GET",), body="raw", free=True, models="list",
                        answer=self.answer, prepare=self.prepare)]
        if get_path is not None:
            routes.append(Route(get_path, "models.retrieve", methods=("GET",), body="raw", free=True, models="get"))
        return routes

    def prepare(self, exchange, body):
        if exchange.model_allowed is not None and self.page_size:
            query = [(k, v) for k, v in parse_qsl(exchange.query, keep_blank_values=True) if k != self.page_size]
            exchange.query = urlencode(query + [(self.page_size, str(LISTING_PAGE_MAX))])
        return body

    def answer(self, exchange, answer, usage, credits):
        allowed = exchange.model_allowed
        entries = answer.get(self.items)
        if allowed is None or not isinstance(entries, list):
            return None
        kept = [e for e in entries if isinstance(e, dict) and allowed(self.model_of(e))]
        answer[self.items] = kept
        if self.cursors:
            answer["first_id"] = kept[0].get(self.name) if kept else None
            answer["last_id"] = kept[-1].get(self.name) if kept else None
        return answer

    def model_of(self, entry):
        name = entry.get(self.name)
        return name.removeprefix(self.prefix) if isinstance(name, str) else ""


def range_problem(name, value, low, high):
    """The 400 message for an integer field outside [low, high]; None when it
    is in range or not an integer (a type the type checks name)."""
    if type(value) is int and not low <= value <= high:
        return f"'{name}' must be between {low} and {high}."
    return None


def json_or_none(data):
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def member(value, key):
    """value[key] when value is a JSON object, else None."""
    return value.get(key) if isinstance(value, dict) else None


def integer(mapping, *path):
    """mapping[path...] as an int, 0 when missing or not a number."""
    value = mapping
    for key in path:
        if not isinstance(value, dict):
            return 0
        value = value.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def error_message(payload):
    """The message of a provider error object, in any of the usual shapes:
    {"error": {"message": …}}, {"error": "…"}, {"message": …, "code": …}."""
    if not isinstance(payload, dict):
        return ""
    error = payload.get("error", payload)
    if isinstance(error, str):
        return error[:500] or "error"
    if isinstance(error, dict):
        message = error.get("message") or error.get("code") or error.get("type") or "error"
        return str(message)[:500]
    return "error"
