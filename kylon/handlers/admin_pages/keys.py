"""Agent keys: the list with filters, spend and limits, creating one (shown
once, with a snippet for every SDK, its limits set at creation), editing one
(name, expiry, limits), revoking."""

import datetime

import tornado.web

from ... import admin, admin_reports, audit, controls
from ...admin import AdminError
from .base import AdminPage, safe_next

# An active key that expires within this is flagged, and listed as "expiring".
EXPIRY_WARNING = datetime.timedelta(days=7)
KEY_FILTERS = ("all", "active", "expiring", "expired", "revoked")


def time_left(delta):
    if delta >= datetime.timedelta(days=1):
        return f"{delta.days} d"
    return f"{max(1, delta.seconds // 3600)} h"


def with_state(keys):
    """Each key with its state (active, expired or revoked) and, for an active
    key expiring soon, how long it has left."""
    now = admin.utcnow()
    for key in keys:
        expires = admin.parse_time(key["expires_at"], "expires_at") if key["expires_at"] else None
        key["expiring"] = None
        if key["revoked_at"]:
            key["state"] = "revoked"
        elif expires and expires <= now:
            key["state"] = "expired"
        else:
            key["state"] = "active"
            if expires and expires - now <= EXPIRY_WARNING:
                key["expiring"] = time_left(expires - now)
    return keys


def keep(key, wanted):
    if wanted == "expiring":
        return bool(key["expiring"])
    return wanted == "all" or key["state"] == wanted


class KeysPage(AdminPage):
    nav = "keys"

    async def get(self):
        wanted = self.get_argument("state", "all")
        wanted = wanted if wanted in KEY_FILTERS else "all"

        def work():
            keys = admin.list_keys()
            return keys, admin.list_agents(), admin_reports.key_spend("30d"), admin_reports.key_periods(keys)

        keys, agents, spend, periods = await self.services.db.run(work)
        keys = with_state(keys)
        counts = {f: sum(1 for k in keys if keep(k, f)) for f in KEY_FILTERS}
        self.render_page(
            "keys.html",
            keys=[k for k in keys if keep(k, wanted)],
            agents=agents,
            names={a["id"]: a["name"] for a in agents},
            spend=spend,
            periods=periods,
            resets=controls.LIMIT_RESETS,
            wanted=wanted,
            filters=KEY_FILTERS,
            counts=counts,
        )

    async def post(self):
        agent_id = self.get_body_argument("agent_id", "")
        name = self.get_body_argument("name", "").strip()
        expires = self.get_body_argument("expires_at", "").strip() or None
        limits = self.form_fields(controls.KEY_FIELDS)
        created = await self.run_admin(admin.create_key, agent_id, name, expires, limits, actor=self.who)
        if created is None:
            from_agent = self.get_body_argument("back", "") == "agent" and agent_id.isdigit()
            return self.redirect(f"/admin/agents/{agent_id}" if from_agent else "/admin/keys")
        agent = await self.services.db.run(admin.agent_detail, created["agent_id"])
        # The only time the key is shown: straight in this answer, never stored.
        base = f"{self.request.protocol}://{self.request.host}"
        self.render_page("key_created.html", created=created, agent=agent, base_url=base)


class KeyPage(AdminPage):
    """One key: its limits and this period's spend, the form to edit it, its audit trail."""

    nav = "keys"

    async def get(self, key_id):
        def work():
            key = admin.key_dict(admin.get_key(key_id))
            return {
                "key": key,
                "agent": admin.agent_detail(key["agent_id"]),
                "period": admin_reports.key_periods([key]).get(key["id"]),
                "entries": audit.list_entries("key", key["id"], 20),
            }

        try:
            data = await self.services.db.run(work)
        except AdminError as e:
            raise tornado.web.HTTPError(e.status, e.message)
        with_state([data["key"]])
        self.render_page("key.html", resets=controls.LIMIT_RESETS, **data)

    async def post(self, key_id):
        name = self.get_body_argument("name", "").strip()
        # An empty expiry field clears the expiry.
        expires = self.get_body_argument("expires_at", "").strip() or None
        limits = self.form_fields(controls.KEY_FIELDS)
        key = await self.run_admin(admin.update_key, key_id, name, expires, limits, actor=self.who)
        if key is not None:
            # The new limits apply to the key's next call.
            await self.services.cache.refresh()
            self.flash(f"Key {key['prefix']}… saved.")
        self.redirect(f"/admin/keys/{key_id}")


class KeyRevokePage(AdminPage):
    async def post(self, key_id):
        result = await self.run_admin(admin.revoke_key, key_id, actor=self.who)
        if result is not None:
            key, _ = result
            self.services.cache.revoke_key_id(key["id"])
            self.flash(f"Key {key['prefix']}… revoked.")
        self.redirect(safe_next(self.get_body_argument("next", "/admin/keys")))
