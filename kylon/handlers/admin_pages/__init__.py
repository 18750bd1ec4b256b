"""The admin pages under /admin (SPEC §10): Jinja templates from templates/,
CSS and JS from static/ (no CDN: the pages work offline). One module per
resource; `base` has what they share.

Log-in is with the admin token; the session is a database row named by a
random id kept in a signed, HttpOnly, SameSite=Strict cookie. Every form
carries Tornado's XSRF token. Wrong tokens slow down per client address
(`Services.admin_tokens`). All database work goes through kylon/admin.py on
the database thread, and every change is told to the in-process caches at
once, as the JSON API does.
"""

from .agents import AgentControlsPage, AgentCreditsPage, AgentEditPage, AgentPage, AgentsPage
from .audit import AuditPage
from .base import template_environment
from .gates import GateDeletePage, GatesPage
from .keys import KeyPage, KeyRevokePage, KeysPage
from .login import LoginPage, LogoutPage
from .overview import OverviewPage
from .pricing import PricingDeletePage, PricingPage
from .spenders import TopSpendersPage
from .usage import UsageCsvPage, UsagePage, UsageRecordPage
from .webhooks import WebhookDeletePage, WebhookEditPage, WebhooksPage, WebhookTestPage

__all__ = ["default_handlers", "template_environment"]

default_handlers = [
    (r"/admin/?", OverviewPage),
    (r"/admin/login", LoginPage),
    (r"/admin/logout", LogoutPage),
    (r"/admin/agents", AgentsPage),
    (r"/admin/agents/([0-9]+)", AgentPage),
    (r"/admin/agents/([0-9]+)/edit", AgentEditPage),
    (r"/admin/agents/([0-9]+)/credits", AgentCreditsPage),
    (r"/admin/agents/([0-9]+)/controls", AgentControlsPage),
    (r"/admin/top", TopSpendersPage),
    (r"/admin/keys", KeysPage),
    (r"/admin/keys/([0-9]+)", KeyPage),
    (r"/admin/keys/([0-9]+)/revoke", KeyRevokePage),
    (r"/admin/usage", UsagePage),
    (r"/admin/usage.csv", UsageCsvPage),
    (r"/admin/usage/([A-Za-z0-9_.:-]+)", UsageRecordPage),
    (r"/admin/pricing", PricingPage),
    (r"/admin/pricing/delete", PricingDeletePage),
    (r"/admin/gates", GatesPage),
    (r"/admin/gates/([0-9]+)/delete", GateDeletePage),
    (r"/admin/audit", AuditPage),
    (r"/admin/webhooks", WebhooksPage),
    (r"/admin/webhooks/([0-9]+)", WebhookEditPage),
    (r"/admin/webhooks/([0-9]+)/delete", WebhookDeletePage),
    (r"/admin/webhooks/([0-9]+)/test", WebhookTestPage),
]
