"""A call's usage record and the metric observations that go with it.

`build_record` prices the usage and returns (record, observations): the
record is the row for the usage writer, the observations are
(metric, label values, amount) for `metrics.observe`.
"""

from dataclasses import dataclass

from .. import metrics
from ..billing import credits_for

TOKEN_KINDS = ("input", "cached_input", "cache_write", "output", "reasoning")


@dataclass(slots=True)
class CallState:
    """One authenticated proxy call, as far as its record is concerned."""

    request_id: str
    provider: object  # providers.Provider
    key: object  # auth.KeyEntry
    agent: object  # auth.AgentEntry
    exchange: object  # providers.Exchange
    started_at: object  # naive UTC datetime
    t0: float  # time.monotonic() at arrival
    balance: object  # credits.Balance of the agent
    route_name: str = ""  # the route's label in records and metrics
    first_byte_at: float | None = None
    held: object = 0  # credits held while the call runs
    recorded: bool = False
    upstream_status: int = 0  # the upstream's HTTP status, once its headers came
    # The call's lines in the journal's open-call file (kylon/journal.py).
    journal_line: bytes = b""
    progress_line: bytes = b""
    progress: object = None  # what the last progress line was written from
    answered: bool = False  # the last progress line is written: the whole answer went out
    # A WebSocket session's messages: sent by the client, and by the upstream.
    client_frames: int = 0
    upstream_frames: int = 0

    def __post_init__(self):
        route = self.exchange.route
        self.route_name = route.name if route is not None else "passthrough"


def status_class(status):
    return f"{status // 100}xx" if status else "none"


def build_record(call, status, http_status, usage, pricebook, now, error="", upstream_request_id=""):
    """(usage record, observations) for a call that ended at `now`."""
    provider = call.provider.name
    exchange = call.exchange
    model = exchange.model
    price, fallback = pricebook.price(provider, exchange.price_model or model)
    credits = credits_for(usage, price)
    route = call.route_name
    ttfb = None if call.first_byte_at is None else call.first_byte_at - call.t0
    model_label = model if pricebook.known_model(provider, model) else "other"
    observations = observe_call(call, http_status, now, ttfb) + observe_usage(provider, model_label, usage, credits)
    record = {
        "request_id": call.request_id,
        "agent_id": call.agent.agent_id,
        "key_id": call.key.key_id,
        "provider": provider,
        "route": route if exchange.route is not None else exchange.path[:200],
        "model": model[:200],
        "stream": exchange.stream,
        "status": str(status),
        "http_status": http_status,
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "unit": usage.unit,
        "units": usage.units,
        "credits": credits,
        "estimated": usage.estimated,
        "fallback_price": fallback and not usage.empty and usage.reported_cost is None,
        "error": error[:500],
        "upstream_request_id": upstream_request_id,
        "started_at": call.started_at,
        "duration_ms": int((now - call.t0) * 1000),
        "ttfb_ms": None if ttfb is None else int(ttfb * 1000),
        "client_frames": call.client_frames,
        "upstream_frames": call.upstream_frames,
    }
    return record, observations


def observe_call(call, http_status, now, ttfb):
    labels = (call.provider.name, call.route_name)
    observations = [
        (metrics.REQUESTS, (*labels, status_class(http_status)), 1),
        (metrics.REQUEST_DURATION, labels, now - call.t0),
    ]
    if ttfb is not None:
        observations.append((metrics.TIME_TO_FIRST_BYTE, labels, ttfb))
    return observations


def observe_usage(provider, model_label, usage, credits):
    observations = []
    for kind in TOKEN_KINDS:
        count = getattr(usage, kind + "_tokens")
        if count:
            observations.append((metrics.TOKENS, (provider, model_label, kind), count))
    if usage.units:
        observations.append((metrics.UNITS, (provider, model_label, usage.unit), float(usage.units)))
    if credits:
        observations.append((metrics.CREDITS, (provider, model_label), float(credits)))
    return observations
