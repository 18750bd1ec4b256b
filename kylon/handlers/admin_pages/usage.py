"""Usage records: the filtered, paged list (or its groups), one record's
detail, and the CSV export."""

import csv
import datetime
import io
import math
import urllib.parse
from decimal import Decimal, InvalidOperation

import tornado.web

from ... import admin, admin_reports
from ...admin import AdminError
from ...models import UsageStatus
from .base import AdminPage

USAGE_PAGE_SIZE = 50
# "failed": every status but completed.
USAGE_STATUSES = tuple(status.value for status in UsageStatus) + ("failed",)
USAGE_FILTERS = ("agent_id", "key_id", "provider", "model", "status", "since", "until")
CSV_BATCH = 1000
NAME_COLUMNS = {"agent_id": "agent_name", "key_id": "key_name"}


def csv_fields():
    """The API's fields, with the agent's and the key's names beside their ids."""
    fields = []
    for field in admin.USAGE_FIELDS:
        fields += [field, NAME_COLUMNS[field]] if field in NAME_COLUMNS else [field]
    return fields


CSV_FIELDS = csv_fields()


def _whole(text, default, low, high):
    try:
        return max(low, min(high, int(text)))
    except (TypeError, ValueError):
        return default


def names_and_keys():
    """On the database thread: the agents, and every key's label by id."""
    return admin.list_agents(), admin_reports.key_labels()


def narrowed(group, by, query):
    """The usage page's link to one group's calls: the filter, narrowed to it."""
    key = group["key"]
    if by == "day":
        day = datetime.date.fromisoformat(key[0])
        narrow = {"since": f"{day}T00:00", "until": f"{day + datetime.timedelta(days=1)}T00:00"}
    elif by == "model":
        narrow = {"provider": key[0], "model": key[1]}
    else:
        narrow = {f"{by}_id": key[0] or ""}
    return "/admin/usage?" + urllib.parse.urlencode({**query, **narrow})


class UsagePage(AdminPage):
    nav = "usage"

    def filters(self):
        return {f: self.get_argument(f, "").strip() for f in USAGE_FILTERS}

    async def get(self):
        filters = self.filters()
        group = self.get_argument("group", "")
        group = group if group in admin_reports.GROUPINGS else ""
        per_page = _whole(self.get_argument("per_page", None), USAGE_PAGE_SIZE, 1, 500)
        page = _whole(self.get_argument("page", None), 1, 1, 10**6)

        def work():
            totals = admin_reports.usage_totals(filters)
            if group:
                return totals, [], admin_reports.usage_groups(filters, group)
            return totals, admin.list_usage(filters, per_page, (page - 1) * per_page), []

        error = None
        try:
            totals, rows, groups = await self.services.db.run(work)
        except AdminError as e:
            totals, rows, groups, error = None, [], [], e.message
        agents, keys = await self.services.db.run(names_and_keys)
        pages = max(1, math.ceil((totals or {}).get("requests", 0) / per_page))
        query = {k: v for k, v in filters.items() if v}
        paging = {**query, **({"per_page": per_page} if per_page != USAGE_PAGE_SIZE else {})}

        def page_url(n):
            return "/admin/usage?" + urllib.parse.urlencode({**paging, "page": n})

        for g in groups:
            g["url"] = narrowed(g, group, query)
        self.render_page(
            "usage.html",
            error=error,
            filters=filters,
            query=query,
            active=len(query),
            group=group,
            groups=groups,
            groupings=admin_reports.GROUPINGS,
            totals=totals,
            rows=rows,
            agents=agents,
            keys=keys,
            names={a["id"]: a["name"] for a in agents},
            providers=sorted(self.services.providers),
            statuses=USAGE_STATUSES,
            page=page,
            pages=pages,
            page_url=page_url,
            csv_url="/admin/usage.csv?" + urllib.parse.urlencode(query),
        )


class UsageRecordPage(AdminPage):
    nav = "usage"

    async def get(self, request_id):
        try:
            record = await self.services.db.run(admin_reports.usage_record, request_id)
        except AdminError as e:
            raise tornado.web.HTTPError(e.status, e.message)
        self.render_page("usage_record.html", r=record, fields=admin.USAGE_FIELDS)


def csv_cell(value):
    """Text a spreadsheet would run as a formula (model names come from
    clients) is quoted with a leading apostrophe; decimals are written plainly
    (0.000000000, never 0E-9)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value:f}"
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


def csv_row(record, names, keys):
    row = dict(record, credits=Decimal(record["credits"]), units=Decimal(record["units"]))
    row["agent_name"] = names.get(record["agent_id"], "")
    key = keys.get(record["key_id"]) if record["key_id"] else None
    row["key_name"] = f"{key['prefix']}… {key['name']}".strip() if key else ""
    return [csv_cell(row[f]) for f in CSV_FIELDS]


class UsageCsvPage(UsagePage):
    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Content-Type", "text/csv; charset=UTF-8")

    async def get(self):
        filters = self.filters()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        agents, keys = await self.services.db.run(names_and_keys)
        names = {a["id"]: a["name"] for a in agents}
        after = 0
        first = True
        while True:
            try:
                batch = await self.services.db.run(admin.usage_export_batch, filters, after, CSV_BATCH)
            except AdminError as e:
                raise tornado.web.HTTPError(e.status, e.message)
            if first:
                self.set_header("Content-Disposition", f'attachment; filename="kylon-usage-{stamp}.csv"')
                self.write_csv([CSV_FIELDS])
                first = False
            if not batch:
                break
            self.write_csv([csv_row(record, names, keys) for _, record in batch])
            await self.flush()
            after = batch[-1][0]
            if len(batch) < CSV_BATCH:
                break
        self.finish()

    def write_csv(self, rows):
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows(rows)
        self.write(out.getvalue())
