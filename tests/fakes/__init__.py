"""Fake provider upstreams. Each module (or package) `<name>_fake` defines
`start()`, returning a started FakeServer whose `kylon_env()` gives the
variables that point Kylon at it (operator key, base URL). Adding a fake =
adding a module; nothing lists them."""

import importlib
import pkgutil


def start_all():
    fakes = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.endswith("_fake"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            fakes[info.name[: -len("_fake")]] = module.start()
    return fakes
