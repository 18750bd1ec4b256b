"""Top spenders: the agents and the keys with the most spend today, over 7
or over 30 days (from the daily rollups)."""

from ... import admin_reports
from .base import AdminPage


class TopSpendersPage(AdminPage):
    nav = "agents"

    async def get(self):
        range_name = self.get_argument("range", "7d")
        range_name = range_name if range_name in admin_reports.SPEND_RANGES else "7d"
        top = await self.services.db.run(admin_reports.top_spenders, range_name)
        self.render_page("top_spenders.html", ranges=admin_reports.SPEND_RANGES, range=range_name, **top)
