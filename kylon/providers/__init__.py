"""The provider registry: every module in this package that defines `provider`.

Adding a provider means adding one module here; nothing else lists them.
"""

import importlib
import pkgutil

from .base import Provider, Route, Exchange


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
