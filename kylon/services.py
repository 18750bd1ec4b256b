"""The long-lived parts of a running Kylon, handed to every handler through
`application.settings["kylon"]`."""

from dataclasses import dataclass, field

from .throttle import admin_token_throttle


@dataclass
class Services:
    settings: object
    db: object  # db.DatabaseWorker
    cache: object  # auth.AccountCache
    balances: object  # credits.Balances
    writer: object  # usage.UsageWriter
    providers: dict  # name -> Provider
    pricebook: object  # billing.PriceBook
    admin_token_hash: str
    # Proxy calls in progress (for a graceful shutdown).
    open_calls: set = field(default_factory=set)
    # Failed key checks per client address (throttle.FailureThrottle).
    bad_keys: object = None
    # Wrong admin tokens per client address, log-in page and admin API together.
    admin_tokens: object = field(default_factory=admin_token_throttle)
    access_log: object = None  # accesslog.AccessLog
    # Stored responses' owners and background charges (responses.ResponseBindings).
    responses: object = None
    ratelimits: object = None  # ratelimits.RateLimits
    # Every request header a provider takes a Kylon key from: none goes upstream.
    key_headers: frozenset = frozenset()

    def __post_init__(self):
        self.key_headers = frozenset(h for p in self.providers.values() for h in p.client_key_headers)
