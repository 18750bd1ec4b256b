"""GET /healthz: 200 when the process and its database answer."""

from ..models import Setting
from .base import BaseHandler


def _ping():
    Setting.select().limit(1).count()


class HealthHandler(BaseHandler):
    async def get(self):
        try:
            await self.services.db.run(_ping)
        except Exception as e:
            self.write_json({"status": "error", "database": str(e)[:200]}, status=503)
            return
        self.write_json({"status": "ok", "database": "ok"})


default_handlers = [(r"/healthz", HealthHandler)]
