"""Every URL rule Kylon serves, in the order they are matched."""

from . import admin_api, admin_api_webhooks, admin_pages, agent_view, health, metrics, proxy, sockets
from .base import NotFoundHandler  # noqa: F401 (the application's default handler)


def default_handlers(providers):
    """The providers' WebSocket routes and own handlers first (paths under
    /proxy/<name>/ more specific than the generic proxy rule), the agent's own
    view (under /proxy/kylon/), then the proxy, the admin API and pages,
    health and metrics."""
    rules = sockets.socket_rules(providers)
    for provider in providers.values():
        rules.extend(provider.get_handlers())
    for module in (agent_view, proxy, admin_api, admin_api_webhooks, admin_pages, health, metrics):
        rules.extend(module.default_handlers)
    return rules
