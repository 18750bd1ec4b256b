"""Agent keys: the list, creating one (shown once), revoking."""

from ... import admin
from .base import AdminPage, safe_next


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
