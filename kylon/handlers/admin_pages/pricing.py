"""Prices: what is in force per provider and model, and the operator's overrides."""

import urllib.parse

from ... import admin_config
from ...billing import PRICE_FIELDS, lookup_price
from .base import AdminPage


def price_fields(price):
    return {f: getattr(price, f) for f in PRICE_FIELDS}


def price_rows(book, providers, by_key, show, search=""):
    """One row per provider and model that has a default or an override (only
    `show`'s when it names a provider, only models containing `search`), with
    the shipped default beside each field an override sets."""
    rows = []
    for provider in sorted(providers):
        if show and provider != show:
            continue
        models = set(book.defaults.get(provider, {})) | {m for p, m in by_key if p == provider}
        for model in sorted(m for m in models if search.lower() in m.lower()):
            price, fallback = book.price(provider, model)
            override = by_key.get((provider, model))
            default = lookup_price(book.defaults.get(provider, {}), model) or book.fallbacks.get(provider)
            rows.append(
                {
                    "provider": provider,
                    "model": model,
                    "price": price_fields(price),
                    "override": override,
                    "overridden": {f for f in PRICE_FIELDS if override and override.get(f) is not None},
                    "default": price_fields(default) if default else {},
                    "fallback": fallback,
                }
            )
    return rows


def price_data_info(book):
    """The shipped price data's version and date, once the price data file
    provides them (as PriceBook.data_version and .data_date); None before."""
    version, date = getattr(book, "data_version", None), getattr(book, "data_date", None)
    return {"version": version, "date": date} if version or date else None


def editing_values(book, by_key, edit):
    """The form's values for the model being edited: its override, else the price in force."""
    current = by_key.get((edit["provider"], edit["model"]))
    if current is None and edit["model"]:
        price, _ = book.price(edit["provider"], edit["model"])
        current = {f: "" if v is None else str(v) for f, v in price_fields(price).items()}
    return current or {}


class PricingPage(AdminPage):
    nav = "pricing"

    async def get(self):
        overrides = await self.services.db.run(admin_config.list_price_overrides)
        book = self.services.pricebook
        by_key = {(o["provider"], o["model"]): o for o in overrides}
        edit = {"provider": self.get_argument("provider", ""), "model": self.get_argument("model", "")}
        show = self.get_argument("show", "") or edit["provider"]
        if show not in self.services.providers:
            show = ""
        search = self.get_argument("q", "").strip()
        fallbacks = [{"provider": p, "price": price_fields(book.fallbacks[p])} for p in sorted(book.fallbacks)]
        self.render_page(
            "pricing.html",
            rows=price_rows(book, self.services.providers, by_key, show, search),
            search=search,
            price_data=price_data_info(book),
            fallbacks=fallbacks,
            fields=PRICE_FIELDS,
            providers=sorted(self.services.providers),
            edit=edit,
            show=show,
            current=editing_values(book, by_key, edit),
        )

    async def post(self):
        provider = self.get_body_argument("provider", "")
        model = self.get_body_argument("model", "").strip()
        values = {f: self.get_body_argument(f, "").strip() for f in PRICE_FIELDS}
        if provider not in self.services.providers:
            return self.back("/admin/pricing", f"Unknown provider '{provider}'.", "error")
        result = await self.run_admin(admin_config.set_price_override, provider, model, values, actor=self.who)
        if result is not None:
            await self.services.pricebook.reload(self.services.db)
            self.flash(f"Price for {provider} / {model} saved.")
        self.redirect("/admin/pricing?" + urllib.parse.urlencode({"show": provider}))


class PricingDeletePage(AdminPage):
    async def post(self):
        provider = self.get_body_argument("provider", "")
        model = self.get_body_argument("model", "")
        await self.services.db.run(admin_config.delete_price_override, provider, model, actor=self.who)
        await self.services.pricebook.reload(self.services.db)
        url = "/admin/pricing?" + urllib.parse.urlencode({"show": provider})
        self.back(url, f"Override for {provider} / {model} removed.")
