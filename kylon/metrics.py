"""Every Prometheus metric Kylon exports, with its help text (SPEC §11).

No per-key or per-agent labels: their number is unbounded. Model labels are
limited to models with a price of their own; anything else is "other".
"""

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "kylon_requests_total",
    "Proxied requests answered, by provider, route and HTTP status class.",
    ["provider", "route", "status_class"],
)
REQUEST_DURATION = Histogram(
    "kylon_request_duration_seconds",
    "Time from a proxied request's arrival to the end of its answer.",
    ["provider", "route"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_BYTE = Histogram(
    "kylon_time_to_first_byte_seconds",
    "Time from a proxied request's arrival to the upstream's first response byte.",
    ["provider", "route"],
    buckets=LATENCY_BUCKETS,
)
ACTIVE_STREAMS = Gauge(
    "kylon_active_streams",
    "Streamed answers being relayed right now.",
    ["provider"],
)
OPEN_SOCKETS = Gauge(
    "kylon_open_websockets",
    "WebSocket sessions being relayed right now.",
    ["provider"],
)
SOCKET_FRAMES = Counter(
    "kylon_websocket_frames_total",
    "WebSocket messages relayed, by direction (client: sent by the client; upstream: by the provider).",
    ["provider", "route", "direction"],
)
CLIENT_DISCONNECTS = Counter(
    "kylon_client_disconnects_total",
    "Calls whose client went away before the answer ended (the upstream was stopped).",
    ["provider", "route"],
)
UPSTREAM_ERRORS = Counter(
    "kylon_upstream_errors_total",
    "Upstream failures: HTTP 4xx/5xx answers, time-outs, unreachable or broken connections.",
    ["provider", "route", "kind"],
)
TOKENS = Counter(
    "kylon_tokens_total",
    "Tokens consumed, by provider, model and kind (input, cached_input, cache_write, output, reasoning).",
    ["provider", "model", "kind"],
)
UNITS = Counter(
    "kylon_units_total",
    "Non-token units consumed (images, characters, seconds), by provider, model and unit.",
    ["provider", "model", "unit"],
)
CREDITS = Counter(
    "kylon_credits_charged_total",
    "Credits charged to agents, by provider and model.",
    ["provider", "model"],
)
REJECTED = Counter(
    "kylon_rejected_requests_total",
    "Proxy calls refused by Kylon before reaching upstream, by provider and reason.",
    ["provider", "reason"],
)
MALFORMED = Counter(
    "kylon_malformed_requests_total",
    "Proxy requests refused for their HTTP framing (conflicting or bad Content-Length or "
    "Transfer-Encoding, bad chunk sizes), by provider; they leave no usage record.",
    ["provider"],
)
USAGE_PENDING = Gauge(
    "kylon_usage_records_pending",
    "Usage records waiting to be written to the database.",
)
USAGE_WRITTEN = Counter(
    "kylon_usage_records_written_total",
    "Usage records written to the database.",
)
USAGE_WRITE_FAILURES = Counter(
    "kylon_usage_write_failures_total",
    "Failed attempts to write a batch of usage records (they are kept and retried).",
)


# Labelled series, looked up once: `.labels()` validates and locks on every
# call, and a proxied call touches about ten series. The label values are
# bounded (providers, route names, known models or "other"), so is this map.
_children = {}


def child(metric, *labels):
    key = (metric, labels)
    series = _children.get(key)
    if series is None:
        series = _children[key] = metric.labels(*labels)
    return series


HISTOGRAMS = (REQUEST_DURATION, TIME_TO_FIRST_BYTE)


def observe(observations):
    """Apply (metric, label values, amount) observations: histograms observe,
    counters count."""
    for metric, labels, amount in observations:
        series = child(metric, *labels)
        if metric in HISTOGRAMS:
            series.observe(amount)
        else:
            series.inc(amount)
