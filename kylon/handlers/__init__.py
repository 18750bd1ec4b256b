"""Every URL rule Kylon serves, in the order they are matched."""

from . import admin_api, admin_pages, health, metrics, proxy, sockets
from .base import NotFoundHandler  # noqa: F401 (the application's default handler)


def default_handlers(providers):
    """The providers' WebSocket routes and own handlers first (paths under
    /proxy/<name>/ more specific than the generic proxy rule), then the
    proxy, the admin API and pages, health and metrics."""
    rules = sockets.socket_rules(providers)
    for provider in providers.values():
        rules.extend(provider.get_handlers())
    for module in (proxy, admin_api, admin_pages, health, metrics):
        rules.extend(module.default_handlers)
    return rules
