"""The long-lived parts of a running Kylon, handed to every handler through
`application.settings["kylon"]`."""

from dataclasses import dataclass, field


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
    access_log: object = None  # accesslog.AccessLog
    # Every request header a provider takes a Kylon key from: none goes upstream.
    key_headers: frozenset = frozenset()

    def __post_init__(self):
        self.key_headers = frozenset(h for p in self.providers.values() for h in p.client_key_headers)
