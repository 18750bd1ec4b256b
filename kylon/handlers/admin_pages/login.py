"""Logging in with the admin token, and out."""

import secrets

from ... import admin_sessions
from ...digest import matches_hash
from .base import SESSION_COOKIE, SESSION_HOURS, AdminPage, safe_next


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
        # The admin API counts wrong tokens in the same throttle: one secret, one count.
        right = await self.services.admin_tokens.check(
            self.request.remote_ip or "", lambda: matches_hash(token, self.services.admin_token_hash)
        )
        if right is None:
            return self.refuse(429, "Too many log-in attempts from your address: wait a minute and try again.", next_url)
        if not right:
            return self.refuse(401, "Wrong admin token.", next_url)
        session_id = secrets.token_urlsafe(32)
        await self.services.db.run(
            admin_sessions.create_admin_session, session_id, who or "admin", self.token_tag(), SESSION_HOURS * 3600
        )
        self.set_signed_cookie(SESSION_COOKIE, session_id, expires_days=SESSION_HOURS / 24, **self.cookie_options())
        self.redirect(next_url)

    def refuse(self, status, message, next_url):
        self.render_page("login.html", status=status, login_error=message, next=next_url)


class LogoutPage(AdminPage):
    login_required = False

    async def post(self):
        if self.session is not None:
            await self.services.db.run(admin_sessions.delete_admin_session, self.session_id)
        self.clear_cookie(SESSION_COOKIE, path="/admin")
        self.back("/admin/login", "You are logged out.")
