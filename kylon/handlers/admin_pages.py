"""The admin pages under /admin (SPEC §10): Jinja templates from templates/,
CSS and JS from static/ (no CDN: the pages work offline).

Log-in is with the admin token; the session is a database row named by a
random id kept in a signed, HttpOnly, SameSite=Strict cookie. Every form
carries Tornado's XSRF token. Wrong tokens slow down per client address. All
database work goes through kylon/admin.py on the database thread, and every
change is told to the in-process caches at once, as the JSON API does.
"""

import asyncio
import csv
import datetime
import hmac
import io
import math
import os
import secrets
import time
import urllib.parse
from decimal import Decimal, InvalidOperation

import jinja2
import markupsafe
import tornado.web

from .. import admin
from ..admin import AdminError
from ..billing import PRICE_FIELDS, load_price_overrides
from .admin_api import token_hash
from .base import BaseHandler, new_request_id

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "templates")

SESSION_COOKIE = "kylon_admin"
FLASH_COOKIE = "kylon_flash"
SESSION_HOURS = 12
USAGE_PAGE_SIZE = 50
USAGE_STATUSES = ("completed", "upstream_error", "disconnected", "rejected", "error", "interrupted")
USAGE_FILTERS = ("agent_id", "provider", "model", "status", "since", "until")
CSV_BATCH = 1000

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


# -- templates -------------------------------------------------------------


def format_time(value):
    """'2025-01-02T03:04:05.678Z' → '2025-01-02 03:04:05' (UTC)."""
    if not value:
        return "—"
    return str(value).replace("T", " ").rstrip("Z")[:19]


def format_credits(value):
    """Exact credits without a tail of zeros, at least two decimals."""
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    d = d.normalize()
    if d.as_tuple().exponent > -2:
        d = d.quantize(Decimal("0.01"))
    return f"{d:,f}"


def format_number(value):
    return f"{int(value or 0):,}"


def _load_templates():
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        # Compiled once at start-up: no file reads on the IOLoop afterwards.
        auto_reload=False,
    )
    env.filters.update(when=format_time, credits=format_credits, number=format_number)
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)
    return env


TEMPLATE_ENV = _load_templates()


# -- slowing down wrong tokens -----------------------------------------------


class LoginThrottle:
    """Per client address: after n failed log-ins, the next attempt waits
    0.5 s × 2^(n-1) (at most 30 s) from the last failure. Attempts from one
    address are checked one at a time; a queue of them is refused outright."""

    BASE_DELAY = 0.5
    MAX_DELAY = 30.0
    MAX_WAITING = 3
    FORGET_AFTER = 15 * 60
    MAX_CLIENTS = 10000

    def __init__(self):
        self.clients = {}  # address -> _ClientState

    def state(self, address):
        now = time.monotonic()
        if len(self.clients) >= self.MAX_CLIENTS:
            self.clients = {
                a: s for a, s in self.clients.items() if s.waiting or now - s.last_failure < self.FORGET_AFTER
            }
        state = self.clients.get(address)
        if state is None or (not state.waiting and now - state.last_failure >= self.FORGET_AFTER):
            state = self.clients[address] = _ClientState()
        return state

    def delay(self, failures):
        return 0.0 if failures == 0 else min(self.MAX_DELAY, self.BASE_DELAY * 2 ** (failures - 1))


class _ClientState:
    def __init__(self):
        self.lock = asyncio.Lock()
        self.failures = 0
        self.last_failure = 0.0
        self.waiting = 0


THROTTLE = LoginThrottle()


# -- the base of every page --------------------------------------------------


class AdminPage(BaseHandler):
    # BaseHandler turns the XSRF check off for header-authenticated calls;
    # these pages authenticate with a cookie, so they need it back.
    check_xsrf_cookie = tornado.web.RequestHandler.check_xsrf_cookie
    login_required = True
    nav = ""

    def set_default_headers(self):
        if not hasattr(self, "request_id"):
            self.request_id = new_request_id()
        self.set_header("x-kylon-request-id", self.request_id)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("X-Content-Type-Options", "nosniff")
        # Pages show balances, keys (once) and usage: never kept in a cache.
        self.set_header("Cache-Control", "no-store")

    async def prepare(self):
        self.session = None
        cookie = self.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_HOURS / 24)
        if cookie:
            session = await self.services.db.run(admin.admin_session, cookie.decode("utf-8", "replace"))
            if session is not None and hmac.compare_digest(session.get("token", ""), self.token_tag()):
                self.session = session
                self.session_id = cookie.decode()
        if self.login_required and self.session is None:
            if self.request.method in ("GET", "HEAD"):
                self.redirect("/admin/login?" + urllib.parse.urlencode({"next": self.request.uri}))
            else:
                self.flash("Your session has ended: log in again.", "error")
                self.redirect("/admin/login")

    def token_tag(self):
        # Sessions die with the admin token: a new token ends every old session.
        return self.services.admin_token_hash[:16]

    @property
    def who(self):
        return (self.session or {}).get("who") or "admin"

    def cookie_options(self):
        return {"httponly": True, "samesite": "Strict", "secure": self.request.protocol == "https", "path": "/admin"}

    def flash(self, message, kind="ok"):
        self.set_signed_cookie(FLASH_COOKIE, f"{kind}:{message}", expires_days=None, **self.cookie_options())

    def take_flash(self):
        value = self.get_signed_cookie(FLASH_COOKIE, max_age_days=1 / 24)
        if value is None:
            return None
        self.clear_cookie(FLASH_COOKIE, path="/admin")
        kind, _, message = value.decode("utf-8", "replace").partition(":")
        return {"kind": kind, "message": message}

    def back(self, url, message=None, kind="ok"):
        if message:
            self.flash(message, kind)
        self.redirect(url)

    def render_page(self, template, status=200, error=None, **context):
        """A page; `error` is shown in place of the message a redirect left."""
        self.set_status(status)
        flash = {"kind": "error", "message": error} if error else self.take_flash()
        page = TEMPLATE_ENV.get_template(template).render(
            xsrf_form_html=lambda: markupsafe.Markup(self.xsrf_form_html()),
            static_url=self.static_url,
            nav=self.nav,
            logged_in=self.session is not None,
            who=self.who,
            flash=flash,
            **context,
        )
        self.finish(page)

    def write_error(self, status_code, **kwargs):
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
            if "xsrf" in message.lower():
                message = (
                    "This form did not carry a valid XSRF token (it is stale or came from another site). "
                    "Reload the page and try again."
                )
        elif status_code >= 500:
            message = f"Internal error in Kylon (request id {self.request_id})."
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            TEMPLATE_ENV.get_template("error.html").render(
                static_url=self.static_url, status=status_code, message=message, nav="",
                logged_in=False, who="", flash=None, xsrf_form_html=lambda: "",
            )
        )

    async def run_admin(self, fn, *args, **kwargs):
        """An admin function on the database thread; AdminError → None and a flash."""
        try:
            return await self.services.db.run(fn, *args, **kwargs)
        except AdminError as e:
            self.flash(e.message, "error")
            return None


# -- log-in ------------------------------------------------------------------


def safe_next(url):
    """Only a path of these pages: never another site (//host, /\\host)."""
    if not url or not url.startswith("/admin") or url.startswith(("//", "/\\")) or "\\" in url:
        return "/admin"
    return url


class LoginPage(AdminPage):
    login_required = False

    def get(self):
        if self.session is not None:
            return self.redirect(safe_next(self.get_argument("next", "")))
        self.render_page("login.html", login_error=None, next=safe_next(self.get_argument("next", "")))

    async def post(self):
        next_url = safe_next(self.get_argument("next", ""))
        token = self.get_body_argument("token", "")
        who = " ".join(self.get_body_argument("who", "").split())[:60]
        client = THROTTLE.state(self.request.remote_ip or "")
        if client.waiting >= THROTTLE.MAX_WAITING:
            return self.refuse(429, "Too many log-in attempts from your address: wait a minute and try again.", next_url)
        client.waiting += 1
        try:
            async with client.lock:
                wait = client.last_failure + THROTTLE.delay(client.failures) - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                good = bool(token) and hmac.compare_digest(token_hash(token.strip()), self.services.admin_token_hash)
                if not good:
                    client.failures += 1
                    client.last_failure = time.monotonic()
                else:
                    client.failures = 0
        finally:
            client.waiting -= 1
        if not good:
            return self.refuse(401, "Wrong admin token.", next_url)
        session_id = secrets.token_urlsafe(32)
        await self.services.db.run(
            admin.create_admin_session, session_id, who or "admin", self.token_tag(), SESSION_HOURS * 3600
        )
        self.set_signed_cookie(SESSION_COOKIE, session_id, expires_days=SESSION_HOURS / 24, **self.cookie_options())
        self.redirect(next_url)

    def refuse(self, status, message, next_url):
        self.render_page("login.html", status=status, login_error=message, next=next_url)


class LogoutPage(AdminPage):
    login_required = False

    async def post(self):
        if self.session is not None:
            await self.services.db.run(admin.delete_admin_session, self.session_id)
        self.clear_cookie(SESSION_COOKIE, path="/admin")
        self.back("/admin/login", "You are logged out.")


# -- overview ----------------------------------------------------------------


def today_start():
    return admin.utcnow().replace(hour=0, minute=0, second=0, microsecond=0)


class OverviewPage(AdminPage):
    nav = "overview"

    async def get(self):
        range_name = self.get_argument("range", "24h")
        if range_name not in admin.CHART_RANGES:
            range_name = "24h"
        since = today_start().isoformat()

        def work():
            return {
                "today": admin.usage_totals({"since": since}),
                "chart": admin.usage_series(range_name),
                "agents": len(admin.list_agents()),
            }

        data = await self.services.db.run(work)
        providers = sorted(self.services.providers.values(), key=lambda p: p.name)
        self.render_page(
            "overview.html",
            providers=providers,
            ranges=list(admin.CHART_RANGES),
            range=range_name,
            **data,
        )


# -- agents ------------------------------------------------------------------


def split_skills(text):
    return [s for s in text.replace(",", " ").split() if s]


class AgentsPage(AdminPage):
    nav = "agents"

    async def get(self):
        agents = await self.services.db.run(admin.list_agents)
        self.render_page("agents.html", agents=agents)

    async def post(self):
        name = self.get_body_argument("name", "")
        skills = split_skills(self.get_body_argument("skills", ""))
        credits = self.get_body_argument("credits", "").strip() or "0"
        agent = await self.run_admin(admin.create_agent, name, skills, credits, actor=self.who)
        if agent is None:
            return self.redirect("/admin/agents")
        self.back(f"/admin/agents/{agent['id']}", f"Agent '{agent['name']}' created.")


class AgentPage(AdminPage):
    nav = "agents"

    async def get(self, agent_id):
        def work():
            return {
                "agent": admin.agent_detail(agent_id),
                "ledger": admin.ledger(agent_id),
                "keys": with_state(admin.list_keys(agent_id)),
            }

        try:
            data = await self.services.db.run(work)
        except AdminError as e:
            raise tornado.web.HTTPError(e.status, e.message)
        self.render_page("agent.html", **data)


class AgentEditPage(AdminPage):
    async def post(self, agent_id):
        name = self.get_body_argument("name", None)
        skills = split_skills(self.get_body_argument("skills", ""))
        agent = await self.run_admin(admin.update_agent, agent_id, name, skills)
        if agent is not None:
            self.services.cache.update_agent(agent["id"], skills=agent["skills"])
            self.flash("Agent saved.")
        self.redirect(f"/admin/agents/{agent_id}")


class AgentCreditsPage(AdminPage):
    async def post(self, agent_id):
        amount = self.get_body_argument("amount", "").strip()
        note = self.get_body_argument("note", "").strip()
        url = f"/admin/agents/{agent_id}"
        try:
            value = Decimal(amount)
        except InvalidOperation:
            return self.back(url, f"'{amount}' is not an amount of credits.", "error")
        if not value.is_finite() or value <= 0:
            return self.back(url, "Give a positive amount; choose grant or deduct with the buttons.", "error")
        if self.get_body_argument("direction", "grant") == "deduct":
            value = -value
        result = await self.run_admin(admin.adjust_credits, agent_id, str(value), note, actor=self.who)
        if result is not None:
            self.services.cache.update_agent(result["id"], db_balance=Decimal(result["credits"]))
            verb = "Granted" if value > 0 else "Deducted"
            self.flash(f"{verb} {format_credits(abs(value))} credits; balance {format_credits(result['credits'])}.")
        self.redirect(url)


# -- keys --------------------------------------------------------------------


def with_state(keys):
    """Each key with its state: active, expired or revoked."""
    now = admin.utcnow()
    for key in keys:
        if key["revoked_at"]:
            key["state"] = "revoked"
        elif key["expires_at"] and admin.parse_time(key["expires_at"], "expires_at") <= now:
            key["state"] = "expired"
        else:
            key["state"] = "active"
    return keys


class KeysPage(AdminPage):
    nav = "keys"

    async def get(self):
        def work():
            return admin.list_keys(), admin.list_agents()

        keys, agents = await self.services.db.run(work)
        names = {a["id"]: a["name"] for a in agents}
        self.render_page("keys.html", keys=with_state(keys), agents=agents, names=names)

    async def post(self):
        agent_id = self.get_body_argument("agent_id", "")
        name = self.get_body_argument("name", "").strip()
        expires = self.get_body_argument("expires_at", "").strip() or None
        created = await self.run_admin(admin.create_key, agent_id, name, expires)
        if created is None:
            from_agent = self.get_body_argument("back", "") == "agent" and agent_id.isdigit()
            return self.redirect(f"/admin/agents/{agent_id}" if from_agent else "/admin/keys")
        agent = await self.services.db.run(admin.agent_detail, created["agent_id"])
        # The only time the key is shown: straight in this answer, never stored.
        base = f"{self.request.protocol}://{self.request.host}"
        self.render_page("key_created.html", created=created, agent=agent, base_url=base)


class KeyRevokePage(AdminPage):
    async def post(self, key_id):
        result = await self.run_admin(admin.revoke_key, key_id)
        if result is not None:
            key, _ = result
            self.services.cache.revoke_key_id(key["id"])
            self.flash(f"Key {key['prefix']}… revoked.")
        self.redirect(safe_next(self.get_body_argument("next", "/admin/keys")))


# -- usage -------------------------------------------------------------------


def _whole(text, default, low, high):
    try:
        return max(low, min(high, int(text)))
    except (TypeError, ValueError):
        return default


class UsagePage(AdminPage):
    nav = "usage"

    def filters(self):
        return {f: self.get_argument(f, "").strip() for f in USAGE_FILTERS}

    async def get(self):
        filters = self.filters()
        per_page = _whole(self.get_argument("per_page", None), USAGE_PAGE_SIZE, 1, 500)
        page = _whole(self.get_argument("page", None), 1, 1, 10**6)

        def work():
            totals = admin.usage_totals(filters)
            rows = admin.list_usage(filters, per_page, (page - 1) * per_page)
            return totals, rows, admin.list_agents()

        error = None
        try:
            totals, rows, agents = await self.services.db.run(work)
        except AdminError as e:
            totals, rows, agents = None, [], await self.services.db.run(admin.list_agents)
            error = e.message
        pages = max(1, math.ceil((totals or {}).get("requests", 0) / per_page))
        query = {k: v for k, v in filters.items() if v}
        if per_page != USAGE_PAGE_SIZE:
            query["per_page"] = per_page

        def page_url(n):
            return "/admin/usage?" + urllib.parse.urlencode({**query, "page": n})

        self.render_page(
            "usage.html",
            error=error,
            filters=filters,
            totals=totals,
            rows=rows,
            agents=agents,
            names={a["id"]: a["name"] for a in agents},
            providers=sorted(self.services.providers),
            statuses=USAGE_STATUSES,
            page=page,
            pages=pages,
            page_url=page_url,
            csv_url="/admin/usage.csv?" + urllib.parse.urlencode({k: v for k, v in filters.items() if v}),
        )


def csv_cell(value):
    """Text a spreadsheet would run as a formula (model names come from
    clients) is quoted with a leading apostrophe."""
    if value is None:
        return ""
    text = str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text):
        return "'" + text
    return text


def _is_number(text):
    try:
        Decimal(text)
        return True
    except InvalidOperation:
        return False


class UsageCsvPage(UsagePage):
    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Content-Type", "text/csv; charset=UTF-8")

    async def get(self):
        filters = self.filters()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        after = 0
        first = True
        while True:
            try:
                batch = await self.services.db.run(admin.usage_export_batch, filters, after, CSV_BATCH)
            except AdminError as e:
                raise tornado.web.HTTPError(e.status, e.message)
            if first:
                self.set_header("Content-Disposition", f'attachment; filename="kylon-usage-{stamp}.csv"')
                self.write_csv([admin.USAGE_FIELDS])
                first = False
            if not batch:
                break
            self.write_csv([[csv_cell(record[f]) for f in admin.USAGE_FIELDS] for _, record in batch])
            await self.flush()
            after = batch[-1][0]
            if len(batch) < CSV_BATCH:
                break
        self.finish()

    def write_csv(self, rows):
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows(rows)
        self.write(out.getvalue())


# -- pricing and gates ---------------------------------------------------------


class PricingPage(AdminPage):
    nav = "pricing"

    async def get(self):
        overrides = await self.services.db.run(admin.list_price_overrides)
        book = self.services.pricebook
        by_key = {(o["provider"], o["model"]): o for o in overrides}
        edit = {"provider": self.get_argument("provider", ""), "model": self.get_argument("model", "")}
        show = self.get_argument("show", "") or edit["provider"]
        if show not in self.services.providers:
            show = ""
        rows = []
        for provider in sorted(self.services.providers):
            if show and provider != show:
                continue
            models = set(book.defaults.get(provider, {})) | {m for p, m in by_key if p == provider}
            for model in sorted(models):
                price, fallback = book.price(provider, model)
                rows.append(
                    {
                        "provider": provider,
                        "model": model,
                        "price": {f: getattr(price, f) for f in PRICE_FIELDS},
                        "override": by_key.get((provider, model)),
                        "fallback": fallback,
                    }
                )
        fallbacks = [
            {"provider": p, "price": {f: getattr(book.fallbacks[p], f) for f in PRICE_FIELDS}}
            for p in sorted(book.fallbacks)
        ]
        current = by_key.get((edit["provider"], edit["model"]))
        if current is None and edit["model"]:
            price, _ = book.price(edit["provider"], edit["model"])
            current = {f: str(getattr(price, f)) if getattr(price, f) is not None else "" for f in PRICE_FIELDS}
        self.render_page(
            "pricing.html",
            rows=rows,
            fallbacks=fallbacks,
            fields=PRICE_FIELDS,
            providers=sorted(self.services.providers),
            edit=edit,
            show=show,
            current=current or {},
        )

    async def post(self):
        provider = self.get_body_argument("provider", "")
        model = self.get_body_argument("model", "").strip()
        values = {f: self.get_body_argument(f, "").strip() for f in PRICE_FIELDS}
        if provider not in self.services.providers:
            return self.back("/admin/pricing", f"Unknown provider '{provider}'.", "error")
        result = await self.run_admin(admin.set_price_override, provider, model, values)
        if result is not None:
            self.services.pricebook.overrides = await self.services.db.run(load_price_overrides)
            self.flash(f"Price for {provider} / {model} saved.")
        self.redirect("/admin/pricing?" + urllib.parse.urlencode({"show": provider}))


class PricingDeletePage(AdminPage):
    async def post(self):
        provider = self.get_body_argument("provider", "")
        model = self.get_body_argument("model", "")
        await self.services.db.run(admin.delete_price_override, provider, model)
        self.services.pricebook.overrides = await self.services.db.run(load_price_overrides)
        url = "/admin/pricing?" + urllib.parse.urlencode({"show": provider})
        self.back(url, f"Override for {provider} / {model} removed.")


class GatesPage(AdminPage):
    nav = "gates"

    async def get(self):
        gates = await self.services.db.run(admin.list_gates)
        self.render_page("gates.html", gates=gates, providers=sorted(self.services.providers))

    async def post(self):
        provider = self.get_body_argument("provider", "")
        route = self.get_body_argument("route", "").strip()
        skill = self.get_body_argument("skill", "").strip()
        if provider not in self.services.providers:
            return self.back("/admin/gates", f"Unknown provider '{provider}'.", "error")
        gate = await self.run_admin(admin.set_gate, provider, route, skill)
        if gate is not None:
            await self.services.cache.refresh()
            self.flash(f"{provider}{route or ' (all routes)'} now needs skill '{gate['skill']}'.")
        self.redirect("/admin/gates")


class GateDeletePage(AdminPage):
    async def post(self, gate_id):
        try:
            await self.services.db.run(admin.delete_gate, gate_id)
        except AdminError as e:
            return self.back("/admin/gates", e.message, "error")
        await self.services.cache.refresh()
        self.back("/admin/gates", "Gate removed.")


default_handlers = [
    (r"/admin/?", OverviewPage),
    (r"/admin/login", LoginPage),
    (r"/admin/logout", LogoutPage),
    (r"/admin/agents", AgentsPage),
    (r"/admin/agents/([0-9]+)", AgentPage),
    (r"/admin/agents/([0-9]+)/edit", AgentEditPage),
    (r"/admin/agents/([0-9]+)/credits", AgentCreditsPage),
    (r"/admin/keys", KeysPage),
    (r"/admin/keys/([0-9]+)/revoke", KeyRevokePage),
    (r"/admin/usage", UsagePage),
    (r"/admin/usage.csv", UsageCsvPage),
    (r"/admin/pricing", PricingPage),
    (r"/admin/pricing/delete", PricingDeletePage),
    (r"/admin/gates", GatesPage),
    (r"/admin/gates/([0-9]+)/delete", GateDeletePage),
]
