"""Gates: which skill a provider, or a route under it, requires."""

from ... import admin_config
from ...admin import AdminError
from .base import AdminPage


class GatesPage(AdminPage):
    nav = "gates"

    async def get(self):
        gates = await self.services.db.run(admin_config.list_gates)
        self.render_page("gates.html", gates=gates, providers=sorted(self.services.providers))

    async def post(self):
        provider = self.get_body_argument("provider", "")
        route = self.get_body_argument("route", "").strip()
        skill = self.get_body_argument("skill", "").strip()
        if provider not in self.services.providers:
            return self.back("/admin/gates", f"Unknown provider '{provider}'.", "error")
        gate = await self.run_admin(admin_config.set_gate, provider, route, skill, actor=self.who)
        if gate is not None:
            await self.services.cache.refresh()
            self.flash(f"{provider}{route or ' (all routes)'} now needs skill '{gate['skill']}'.")
        self.redirect("/admin/gates")


class GateDeletePage(AdminPage):
    async def post(self, gate_id):
        try:
            await self.services.db.run(admin_config.delete_gate, gate_id, actor=self.who)
        except AdminError as e:
            return self.back("/admin/gates", e.message, "error")
        await self.services.cache.refresh()
        self.back("/admin/gates", "Gate removed.")
