"""What every admin page shares: the Jinja environment and its filters, the
session and flash cookies, the security headers, and error pages."""

import hmac
import urllib.parse
from decimal import Decimal, InvalidOperation

import jinja2
import markupsafe
import tornado.web

from ... import admin_sessions
from ...admin import AdminError
from ..base import BaseHandler, new_request_id

SESSION_COOKIE = "kylon_admin"
FLASH_COOKIE = "kylon_flash"
SESSION_HOURS = 12

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


CENT = Decimal("0.01")


def format_money(value, sign=False):
    """Money one way on every page: whole cents (the "$" mark comes from the
    stylesheet, so copied figures stay numbers), the exact figure on hover and
    in data-exact. An amount under a cent shows as <0.01, never as 0.00."""
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return value
    cents = abs(d).quantize(CENT)
    tiny = d != 0 and cents == 0
    exact = f"{d.normalize():f}" if d else "0"
    mark = "-" if d < 0 else ("+" if sign and d > 0 else "")
    title = f"exactly {'-' if d < 0 else ''}${exact.lstrip('-')}"
    return markupsafe.Markup('{}{}<span class="money" title="{}" data-exact="{}">{}</span>').format(
        mark, "<" if tiny else "", title, exact, "0.01" if tiny else f"{cents:,f}"
    )


def format_percent(value):
    return f"{float(value or 0) * 100:.1f}%"


def format_change(value):
    """One side of an audit entry's change: none as "—", a list joined."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def plain_decimal(value):
    """A decimal as a form field takes it back: exact, no tail of zeros ("2.5", "10")."""
    return f"{Decimal(str(value)).normalize():f}"


def form_time(value):
    """A stored time as the forms take it back (YYYY-MM-DD HH:MM, UTC)."""
    return str(value).replace("T", " ")[:16] if value else ""


def template_environment(template_path):
    """The admin pages' Jinja environment, every template compiled: made once
    at start-up (application setting `jinja_env`), so no page reads a file on
    the IOLoop."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_path),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
    )
    env.filters.update(
        when=format_time, credits=format_credits, number=format_number, money=format_money, percent=format_percent,
        change=format_change, form_time=form_time, plain=plain_decimal,
    )
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)
    return env


def safe_next(url):
    """Only a path of these pages: never another site (//host, /\\host)."""
    if not url or not url.startswith("/admin") or url.startswith(("//", "/\\")) or "\\" in url:
        return "/admin"
    return url


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
            session = await self.services.db.run(admin_sessions.admin_session, cookie.decode("utf-8", "replace"))
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

    @property
    def templates(self):
        settings = self.settings
        if "jinja_env" not in settings:
            # An application made without the setting: build it once, on first use.
            settings["jinja_env"] = template_environment(settings["template_path"])
        return settings["jinja_env"]

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
        page = self.templates.get_template(template).render(
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
            self.templates.get_template("error.html").render(
                static_url=self.static_url, status=status_code, message=message, nav="",
                logged_in=False, who="", flash=None, xsrf_form_html=lambda: "",
            )
        )

    def form_fields(self, names):
        """Those of `names` the posted form has (a field a form lacks is left as it is)."""
        return {n: self.get_body_argument(n) for n in names if n in self.request.body_arguments}

    async def run_admin(self, fn, *args, **kwargs):
        """An admin function on the database thread; AdminError → None and a flash."""
        try:
            return await self.services.db.run(fn, *args, **kwargs)
        except AdminError as e:
            self.flash(e.message, "error")
            return None
