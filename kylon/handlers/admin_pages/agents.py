"""Agents: the list (with who is near a limit), creating one, an agent's
page, its name, skills, controls and credits, its audit trail."""

from decimal import Decimal, InvalidOperation

import tornado.web

from ... import admin, admin_reports, audit, controls
from ...admin import CHART_RANGES, AdminError
from .base import AdminPage, format_credits
from .keys import with_state

# The agents list's sort orders: how each reads its value from a row.
SORTS = {
    "name": lambda a: a["name"].lower(),
    "balance": lambda a: Decimal(a["credits"]),
    "today": lambda a: Decimal(a["today"]),
    "month": lambda a: Decimal(a["month"]["credits"]),
    "requests": lambda a: a["month"]["requests"],
    "errors": lambda a: a["month"]["error_rate"],
    "last_call": lambda a: a["last_used_at"] or "",
}
NO_USE = {"requests": 0, "failed": 0, "error_rate": 0.0, "input_tokens": 0, "output_tokens": 0, "credits": "0"}


def agents_table(agents, summary, near, search, sort, descending, near_only=False):
    """The agents with this month's figures and why each is near a limit,
    those matching `search` (and near one, if `near_only`), sorted."""
    rows = []
    for agent in agents:
        if search and search.lower() not in agent["name"].lower():
            continue
        if near_only and agent["id"] not in near:
            continue
        found = summary.get(agent["id"], {})
        rows.append(
            {
                **agent,
                "state": admin_reports.balance_state(agent["credits"]),
                "today": found.get("today", "0"),
                "month": found.get("month", NO_USE),
                "active_keys": found.get("active_keys", 0),
                "last_used_at": found.get("last_used_at"),
                "near": near.get(agent["id"], []),
            }
        )
    return sorted(rows, key=SORTS[sort], reverse=descending)


def split_skills(text):
    return [s for s in text.replace(",", " ").split() if s]


class AgentsPage(AdminPage):
    nav = "agents"

    async def get(self):
        search = self.get_argument("q", "").strip()
        sort = self.get_argument("sort", "name")
        sort = sort if sort in SORTS else "name"
        descending = self.get_argument("dir", "asc" if sort == "name" else "desc") == "desc"
        near_only = self.get_argument("near", "") == "1"

        def work():
            return admin.list_agents(), admin_reports.agents_summary(), admin_reports.limit_facts()

        agents, summary, facts = await self.services.db.run(work)
        # Balances less the debits this process has not committed yet.
        agents = [self.services.balances.shown(a) for a in agents]
        near = admin_reports.near_limits(agents, facts)
        self.render_page(
            "agents.html",
            agents=agents_table(agents, summary, near, search, sort, descending, near_only),
            total=len(agents),
            near_count=len(near),
            near_only=near_only,
            search=search,
            sort=sort,
            descending=descending,
            low_balance=admin_reports.LOW_BALANCE,
            key_near=admin_reports.KEY_NEAR_SHARE,
        )

    async def post(self):
        name = self.get_body_argument("name", "")
        skills = split_skills(self.get_body_argument("skills", ""))
        credits = self.get_body_argument("credits", "").strip() or "0"
        agent = await self.run_admin(admin.create_agent, name, skills, credits, actor=self.who)
        if agent is None:
            return self.redirect("/admin/agents")
        self.back(f"/admin/agents/{agent['id']}", f"Agent '{agent['name']}' created.")


class AgentPage(AdminPage):
    nav = "agents"

    async def get(self, agent_id):
        range_name = self.get_argument("range", "7d")
        range_name = range_name if range_name in CHART_RANGES else "7d"
        by = "provider" if self.get_argument("by", "") == "provider" else "model"

        def work():
            keys = admin.list_keys(agent_id)
            return {
                "agent": admin.agent_detail(agent_id),
                "ledger": admin.ledger(agent_id),
                "keys": with_state(keys),
                "periods": admin_reports.key_periods(keys),
                "report": admin_reports.agent_report(agent_id, range_name, by),
                "entries": audit.agent_trail(agent_id, [k["id"] for k in keys]),
            }

        try:
            data = await self.services.db.run(work)
        except AdminError as e:
            raise tornado.web.HTTPError(e.status, e.message)
        agent = data["agent"] = self.services.balances.shown(data["agent"])
        self.render_page(
            "agent.html",
            state=admin_reports.balance_state(agent["credits"]),
            low_balance=admin_reports.LOW_BALANCE,
            ranges=list(CHART_RANGES),
            range=range_name,
            by=by,
            resets=controls.LIMIT_RESETS,
            **data,
        )


class AgentEditPage(AdminPage):
    async def post(self, agent_id):
        name = self.get_body_argument("name", None)
        skills = split_skills(self.get_body_argument("skills", ""))
        agent = await self.run_admin(admin.update_agent, agent_id, name, skills, actor=self.who)
        if agent is not None:
            self.services.cache.update_agent(agent["id"], skills=agent["skills"])
            self.flash("Agent saved.")
        self.redirect(f"/admin/agents/{agent_id}")


class AgentControlsPage(AdminPage):
    """The agent's rate limits, allowed models and alert thresholds (an empty field: no limit)."""

    async def post(self, agent_id):
        fields = self.form_fields(controls.AGENT_FIELDS)
        agent = await self.run_admin(admin.update_agent, agent_id, None, None, fields, actor=self.who)
        if agent is not None:
            # The new limits apply to the agent's next call.
            await self.services.cache.refresh()
            self.flash("Controls saved.")
        self.redirect(f"/admin/agents/{agent_id}")


class AgentCreditsPage(AdminPage):
    async def post(self, agent_id):
        amount = self.get_body_argument("amount", "").strip()
        note = self.get_body_argument("note", "").strip()
        url = f"/admin/agents/{agent_id}"
        try:
            value = Decimal(amount)
        except InvalidOperation:
            return self.back(url, f"'{amount}' is not an amount of credits.", "error")
        if not value.is_finite() or value <= 0:
            return self.back(url, "Give a positive amount; choose grant or deduct with the buttons.", "error")
        if self.get_body_argument("direction", "grant") == "deduct":
            value = -value
        result = await self.run_admin(admin.adjust_credits, agent_id, str(value), note, actor=self.who)
        if result is not None:
            self.services.cache.update_agent(result["id"], db_balance=Decimal(result["credits"]))
            verb = "Granted" if value > 0 else "Deducted"
            balance = self.services.balances.shown(result)["credits"]
            self.flash(f"{verb} {format_credits(abs(value))} credits; balance {format_credits(balance)}.")
        self.redirect(url)
