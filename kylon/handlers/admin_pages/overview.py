"""The overview: today's totals, the requests and credits chart, the providers."""

from ... import admin
from .base import AdminPage


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
