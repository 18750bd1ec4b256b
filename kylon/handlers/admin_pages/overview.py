"""The overview: today's totals, spend and requests over time stacked by
provider or model, the top agents and models, failures, low balances."""

from ... import admin_reports
from ...admin import CHART_RANGES
from .base import AdminPage

GROUP_BY = ("provider", "model")
METRICS = ("credits", "requests")


def choice(value, allowed):
    return value if value in allowed else allowed[0]


class OverviewPage(AdminPage):
    nav = "overview"

    async def get(self):
        range_name = choice(self.get_argument("range", "24h"), list(CHART_RANGES))
        by = choice(self.get_argument("by", ""), GROUP_BY)
        metric = choice(self.get_argument("metric", ""), METRICS)
        data = await self.services.db.run(admin_reports.overview, range_name, by)
        providers = sorted(self.services.providers.values(), key=lambda p: p.name)
        self.render_page(
            "overview.html",
            providers=providers,
            ranges=list(CHART_RANGES),
            range=range_name,
            by=by,
            metric=metric,
            group_by=GROUP_BY,
            metrics=METRICS,
            low_balance=admin_reports.LOW_BALANCE,
            **data,
        )
