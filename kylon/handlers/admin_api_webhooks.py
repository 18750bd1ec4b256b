"""The webhooks alerts go to, in the admin JSON API (docs/controls.md, "Alerts")."""

from .. import admin_webhooks, metrics
from ..alerts import TEST
from .admin_api import AdminAPIHandler


class WebhooksHandler(AdminAPIHandler):
    async def get(self):
        await self.call(lambda: {"data": admin_webhooks.list_webhooks()})

    async def post(self):
        async def work():
            body = self.json_body()
            # The answer is the only place the secret is ever shown.
            await self.call(admin_webhooks.create_webhook, body.get("url"), body.get("events"), body.get("secret"),
                            body.get("enabled", True), actor=self.actor, status=201)

        await self.run(work)


class WebhookHandler(AdminAPIHandler):
    async def get(self, webhook_id):
        await self.call(lambda: admin_webhooks.webhook_dict(admin_webhooks.get_webhook(webhook_id)))

    async def patch(self, webhook_id):
        async def work():
            await self.call(admin_webhooks.update_webhook, webhook_id, self.json_body(), actor=self.actor)

        await self.run(work)

    async def delete(self, webhook_id):
        await self.call(admin_webhooks.delete_webhook, webhook_id, actor=self.actor, status=204)


class WebhookDeliveriesHandler(AdminAPIHandler):
    async def get(self, webhook_id):
        limit = self.get_argument("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            return self.send_kylon_error(400, "'limit' must be a whole number from 1 to 1000.")
        await self.call(lambda: {"data": admin_webhooks.webhook_deliveries(webhook_id, int(limit))})


class WebhookTestHandler(AdminAPIHandler):
    async def post(self, webhook_id):
        # Queued: this process's sender posts it within alert_check_seconds.
        if await self.call(admin_webhooks.send_test, webhook_id, status=202) is not None:
            metrics.child(metrics.ALERT_EVENTS, TEST).inc()


default_handlers = [
    (r"/admin/api/webhooks", WebhooksHandler),
    (r"/admin/api/webhooks/([0-9]+)", WebhookHandler),
    (r"/admin/api/webhooks/([0-9]+)/deliveries", WebhookDeliveriesHandler),
    (r"/admin/api/webhooks/([0-9]+)/test", WebhookTestHandler),
]
