"""The provider registry: every module in this package that defines `provider`.

Adding a provider means adding one module here; nothing else lists them.
"""

import importlib
import pkgutil

from .base import SECRET_QUERY_PARAMS, Exchange, Provider, Route, SocketRoute


def load_providers(env):
    providers = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        provider = getattr(module, "provider", None)
        if isinstance(provider, Provider):
            provider.configure(env)
            providers[provider.name] = provider
    return providers


def secret_query_params(providers):
    """Every query parameter name whose value the access log must hide: the
    generic ones, then each provider's own."""
    names = list(SECRET_QUERY_PARAMS)
    for provider in providers.values():
        names.extend(name for name in provider.secret_query_params if name not in names)
    return tuple(names)
