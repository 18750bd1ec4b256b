"""The admin JSON API under /admin/api (SPEC §10), `Authorization: Bearer <admin token>`.

Each handler runs its work on the database thread (kylon/admin.py) and tells
the in-process caches about it at once, so a revocation or a skill change made
here applies to the very next proxy call.
"""

import json
from decimal import Decimal

from .. import admin, admin_config, audit
from ..admin import AdminError
from ..digest import matches_hash, sha256_hex
from .base import BaseHandler

# app.py hashes the configured admin token with this name.
token_hash = sha256_hex


class AdminAPIHandler(BaseHandler):
    async def prepare(self):
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        expected = self.services.admin_token_hash
        right = await self.throttled_check(
            self.services.admin_tokens, lambda: scheme.lower() == "bearer" and matches_hash(token, expected),
            "Too many wrong admin tokens from your address: wait and try again.",
        )
        if right is False:
            self.send_kylon_error(401, "Admin API needs 'Authorization: Bearer <admin token>'.")

    @property
    def actor(self):
        """Who the audit log names for a change made through the API: "admin
        api", or "<label> (admin api)" when the caller names itself in
        X-Kylon-Admin-Label (as the page's log-in name does; the token is
        shared, so the label tells operators and scripts apart)."""
        label = self.request.headers.get("X-Kylon-Admin-Label", "")
        label = " ".join("".join(c for c in label if c.isprintable()).split())[:60]
        return f"{label} (admin api)" if label else "admin api"

    def json_body(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise AdminError(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            raise AdminError(400, "The request body must be a JSON object.")
        return body

    async def call(self, fn, *args, status=200, shown=None, before_answer=None, **kwargs):
        """Run an admin function on the database thread and answer with its
        result (as `shown` presents it, if given); returns the result itself.
        `before_answer(result)`, a coroutine function, runs before the answer
        goes (a cache refresh: a proxy call made after the answer meets the change)."""
        try:
            result = await self.services.db.run(fn, *args, **kwargs)
        except AdminError as e:
            self.send_kylon_error(e.status, e.message)
            return None
        if before_answer is not None:
            await before_answer(result)
        if status == 204:
            self.set_status(204)
            self.finish()
        else:
            self.write_json(shown(result) if shown else result, status)
        return result

    async def run(self, coroutine_fn):
        try:
            await coroutine_fn()
        except AdminError as e:
            self.send_kylon_error(e.status, e.message)


class AgentsHandler(AdminAPIHandler):
    async def get(self):
        shown = self.services.balances.shown
        await self.call(admin.list_agents, shown=lambda agents: {"data": [shown(a) for a in agents]})

    async def post(self):
        async def work():
            body = self.json_body()
            await self.call(
                admin.create_agent, body.get("name"), body.get("skills") or [], body.get("credits") or 0,
                actor=self.actor, status=201,
            )

        await self.run(work)


class AgentHandler(AdminAPIHandler):
    async def get(self, agent_id):
        await self.call(admin.agent_detail, agent_id, shown=self.services.balances.shown)

    async def patch(self, agent_id):
        async def work():
            body = self.json_body()
            async def refresh(result):
                self.services.cache.update_agent(result["id"], skills=result["skills"])
                # Limits and allowed models apply to the next call.
                await self.services.cache.refresh()

            await self.call(admin.update_agent, agent_id, body.get("name"), body.get("skills"), body,
                            actor=self.actor, shown=self.services.balances.shown, before_answer=refresh)

        await self.run(work)


class CreditsHandler(AdminAPIHandler):
    async def post(self, agent_id):
        async def work():
            body = self.json_body()
            result = await self.call(admin.adjust_credits, agent_id, body.get("amount"), body.get("note") or "",
                                     actor=self.actor, shown=self.services.balances.shown)
            if result is not None:
                self.services.cache.update_agent(result["id"], db_balance=Decimal(result["credits"]))

        await self.run(work)

    async def get(self, agent_id):
        await self.call(lambda: {"data": admin.ledger(agent_id)})


class AgentKeysHandler(AdminAPIHandler):
    async def post(self, agent_id):
        async def work():
            body = self.json_body()
            await self.call(admin.create_key, agent_id, body.get("name") or "", body.get("expires_at"), body,
                            actor=self.actor, status=201)

        await self.run(work)

    async def get(self, agent_id):
        await self.call(lambda: {"data": admin.list_keys(agent_id)})


class KeyHandler(AdminAPIHandler):
    async def get(self, key_id):
        await self.call(lambda: admin.key_dict(admin.get_key(key_id)))

    async def patch(self, key_id):
        async def work():
            body = self.json_body()
            await self.call(admin.update_key, key_id, body.get("name"), body.get("expires_at", ""), body,
                            actor=self.actor, before_answer=lambda result: self.services.cache.refresh())

        await self.run(work)

    async def delete(self, key_id):
        try:
            result, key_hash = await self.services.db.run(admin.revoke_key, key_id, actor=self.actor)
        except AdminError as e:
            return self.send_kylon_error(e.status, e.message)
        self.services.cache.revoke_key_id(result["id"])
        self.write_json(result)


class KeysHandler(AdminAPIHandler):
    async def get(self):
        await self.call(lambda: {"data": admin.list_keys(self.get_argument("agent_id", None))})


class UsageHandler(AdminAPIHandler):
    async def get(self):
        filters = {k: self.get_argument(k, None) for k in ("agent_id", "key_id", "provider", "status", "model", "route", "request_id", "since", "until")}
        limit = self.get_argument("limit", "100")
        offset = self.get_argument("offset", "0")
        if not (limit.isdigit() and offset.isdigit()):
            return self.send_kylon_error(400, "'limit' and 'offset' must be whole numbers.")
        await self.call(
            lambda: {"data": admin.list_usage(filters, int(limit), int(offset)), "totals": admin.usage_totals(filters)}
        )


class PricesHandler(AdminAPIHandler):
    async def get(self):
        book = self.services.pricebook

        def listing():
            defaults = [
                {"provider": provider, "model": model, "input": str(p.input), "output": str(p.output),
                 "cached_input": None if p.cached_input is None else str(p.cached_input),
                 "cache_write": None if p.cache_write is None else str(p.cache_write), "per_unit": str(p.per_unit)}
                for provider, table in sorted(book.defaults.items())
                for model, p in sorted(table.items())
            ]
            return {"defaults": defaults, "overrides": admin_config.list_price_overrides()}

        await self.call(listing)

    async def put(self):
        async def work():
            body = self.json_body()
            result = await self.call(admin_config.set_price_override, body.get("provider"), body.get("model"), body,
                                     actor=self.actor)
            if result is not None:
                await self.services.pricebook.reload(self.services.db)

        await self.run(work)

    async def delete(self):
        provider, model = self.get_argument("provider", ""), self.get_argument("model", "")
        await self.services.db.run(admin_config.delete_price_override, provider, model, actor=self.actor)
        await self.services.pricebook.reload(self.services.db)
        self.set_status(204)
        self.finish()


class GatesHandler(AdminAPIHandler):
    async def get(self):
        await self.call(lambda: {"data": admin_config.list_gates()})

    # The cache is refreshed before the answer: a proxy call the admin makes
    # after the answer already meets the changed gate.
    async def put(self):
        async def work():
            body = self.json_body()
            result = await self.services.db.run(
                admin_config.set_gate, body.get("provider"), body.get("route") or "", body.get("skill"), actor=self.actor
            )
            await self.services.cache.refresh()
            self.write_json(result)

        await self.run(work)


class GateHandler(AdminAPIHandler):
    async def delete(self, gate_id):
        async def work():
            await self.services.db.run(admin_config.delete_gate, gate_id, actor=self.actor)
            await self.services.cache.refresh()
            self.set_status(204)
            self.finish()

        await self.run(work)


class AuditHandler(AdminAPIHandler):
    async def get(self):
        limit, before = self.get_argument("limit", "100"), self.get_argument("before_id", "0")
        if not (limit.isdigit() and before.isdigit()) or not 1 <= int(limit) <= 1000:
            return self.send_kylon_error(400, "'limit' must be a whole number from 1 to 1000, 'before_id' an id.")
        subject, subject_id = self.get_argument("subject", None), self.get_argument("subject_id", None)
        actor = self.get_argument("actor", None)
        await self.call(lambda: {"data": audit.list_entries(subject, subject_id, int(limit), int(before), actor)})


class ProvidersHandler(AdminAPIHandler):
    def get(self):
        self.write_json(
            {
                "data": [
                    {"name": p.name, "configured": p.configured, "base_url": p.base_url,
                     "credential": p.api_key_env}
                    for p in self.services.providers.values()
                ]
            }
        )


default_handlers = [
    (r"/admin/api/agents", AgentsHandler),
    (r"/admin/api/agents/([0-9]+)", AgentHandler),
    (r"/admin/api/agents/([0-9]+)/credits", CreditsHandler),
    (r"/admin/api/agents/([0-9]+)/keys", AgentKeysHandler),
    (r"/admin/api/keys", KeysHandler),
    (r"/admin/api/keys/([0-9]+)", KeyHandler),
    (r"/admin/api/usage", UsageHandler),
    (r"/admin/api/prices", PricesHandler),
    (r"/admin/api/gates", GatesHandler),
    (r"/admin/api/gates/([0-9]+)", GateHandler),
    (r"/admin/api/providers", ProvidersHandler),
    (r"/admin/api/audit", AuditHandler),
]
