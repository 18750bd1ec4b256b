"""Agent keys: the list with filters and spend, creating one (shown once, with
a snippet for every SDK), revoking."""

import datetime

from ... import admin, admin_reports
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
            return admin.list_keys(), admin.list_agents(), admin_reports.key_spend("30d")

        keys, agents, spend = await self.services.db.run(work)
        keys = with_state(keys)
        counts = {f: sum(1 for k in keys if keep(k, f)) for f in KEY_FILTERS}
        self.render_page(
            "keys.html",
            keys=[k for k in keys if keep(k, wanted)],
            agents=agents,
            names={a["id"]: a["name"] for a in agents},
            spend=spend,
            wanted=wanted,
            filters=KEY_FILTERS,
            counts=counts,
        )

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
