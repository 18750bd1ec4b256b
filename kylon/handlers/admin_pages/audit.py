"""The audit log: every admin change, newest first, filtered by subject,
subject id or who made it, a page at a time."""

import urllib.parse

from ... import audit
from ...admin import row_id
from .base import AdminPage

PAGE_SIZE = 50
SUBJECTS = ("agent", "key", "price", "gate", "webhook")


class AuditPage(AdminPage):
    nav = "audit"

    async def get(self):
        filters = {
            "subject": self.get_argument("subject", ""),
            "subject_id": self.get_argument("subject_id", "").strip(),
            "actor": self.get_argument("actor", "").strip(),
        }
        if filters["subject"] not in SUBJECTS:
            filters["subject"] = ""
        before = row_id(self.get_argument("before_id", ""))
        # One more than a page: whether there is an older page.
        entries = await self.services.db.run(
            audit.list_entries, filters["subject"], filters["subject_id"], PAGE_SIZE + 1, before, filters["actor"]
        )
        query = {k: v for k, v in filters.items() if v}
        older = None
        if len(entries) > PAGE_SIZE:
            entries = entries[:PAGE_SIZE]
            older = "/admin/audit?" + urllib.parse.urlencode({**query, "before_id": entries[-1]["id"]})
        self.render_page(
            "audit.html",
            entries=entries,
            filters=filters,
            subjects=SUBJECTS,
            older=older,
            newest="/admin/audit?" + urllib.parse.urlencode(query) if before else None,
        )
