"""Usage records: the filtered, paged list, and its CSV export."""

import csv
import datetime
import io
import math
import urllib.parse
from decimal import Decimal, InvalidOperation

import tornado.web

from ... import admin
from ...admin import AdminError
from ...models import UsageStatus
from .base import AdminPage

USAGE_PAGE_SIZE = 50
USAGE_STATUSES = tuple(status.value for status in UsageStatus)
USAGE_FILTERS = ("agent_id", "provider", "model", "status", "since", "until")
CSV_BATCH = 1000


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
