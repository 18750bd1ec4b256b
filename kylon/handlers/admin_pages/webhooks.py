"""Webhooks: where alerts go (kylon/alerts.py), their recent deliveries and
how each went; adding one (its secret shown once), editing, disabling,
deleting, and sending a test."""

from ... import admin_webhooks, metrics
from ...alerts import EVENT_KINDS, TEST
from .base import AdminPage

# Deliveries shown under each webhook.
RECENT = 10


class WebhooksPage(AdminPage):
    nav = "webhooks"

    async def get(self):
        await self.show()

    async def show(self, created=None):
        def work():
            hooks = admin_webhooks.list_webhooks()
            return hooks, admin_webhooks.list_deliveries([w["id"] for w in hooks], RECENT)

        hooks, deliveries = await self.services.db.run(work)
        self.render_page("webhooks.html", webhooks=hooks, deliveries=deliveries, kinds=EVENT_KINDS, created=created)

    async def post(self):
        created = await self.run_admin(admin_webhooks.create_webhook, self.get_body_argument("url", ""),
                                       self.get_body_arguments("events"),
                                       self.get_body_argument("secret", "").strip() or None, actor=self.who)
        if created is None:
            return self.redirect("/admin/webhooks")
        # The only time the secret is shown: in this answer, never again.
        await self.show(created)


class WebhookEditPage(AdminPage):
    async def post(self, webhook_id):
        """The form's fields present: url, events (with events_sent, as no box
        ticked sends nothing), a new secret when one is typed, enabled."""
        body = {}
        if self.get_body_argument("url", None) is not None:
            body["url"] = self.get_body_argument("url")
        if self.get_body_argument("events_sent", None) is not None:
            body["events"] = self.get_body_arguments("events")
        if self.get_body_argument("secret", "").strip():
            body["secret"] = self.get_body_argument("secret").strip()
        if self.get_body_argument("enabled", None) is not None:
            body["enabled"] = self.get_body_argument("enabled") == "1"
        result = await self.run_admin(admin_webhooks.update_webhook, webhook_id, body, actor=self.who)
        if result is not None:
            done = "saved" if "enabled" not in body else ("enabled" if result["enabled"] else "disabled")
            self.flash(f"Webhook {result['url']} {done}.")
        self.redirect("/admin/webhooks")


class WebhookDeletePage(AdminPage):
    async def post(self, webhook_id):
        result = await self.run_admin(admin_webhooks.delete_webhook, webhook_id, actor=self.who)
        if result is not None:
            self.flash(f"Webhook {result['url']} deleted.")
        self.redirect("/admin/webhooks")


class WebhookTestPage(AdminPage):
    async def post(self, webhook_id):
        if await self.run_admin(admin_webhooks.send_test, webhook_id) is not None:
            metrics.child(metrics.ALERT_EVENTS, TEST).inc()
            self.flash("Test delivery queued: reload to see how it went.")
        self.redirect("/admin/webhooks")
