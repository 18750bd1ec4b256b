"""Agents: the list, creating one, an agent's page, its name, skills and credits."""

from decimal import Decimal, InvalidOperation

import tornado.web

from ... import admin
from ...admin import AdminError
from .base import AdminPage, format_credits
from .keys import with_state


def split_skills(text):
    return [s for s in text.replace(",", " ").split() if s]


class AgentsPage(AdminPage):
    nav = "agents"

    async def get(self):
        agents = await self.services.db.run(admin.list_agents)
        # Balances less the debits this process has not committed yet.
        agents = [self.services.balances.shown(a) for a in agents]
        self.render_page("agents.html", agents=agents)

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
        def work():
            return {
                "agent": admin.agent_detail(agent_id),
                "ledger": admin.ledger(agent_id),
                "keys": with_state(admin.list_keys(agent_id)),
            }

        try:
            data = await self.services.db.run(work)
        except AdminError as e:
            raise tornado.web.HTTPError(e.status, e.message)
        data["agent"] = self.services.balances.shown(data["agent"])
        self.render_page("agent.html", **data)


class AgentEditPage(AdminPage):
    async def post(self, agent_id):
        name = self.get_body_argument("name", None)
        skills = split_skills(self.get_body_argument("skills", ""))
        agent = await self.run_admin(admin.update_agent, agent_id, name, skills)
        if agent is not None:
            self.services.cache.update_agent(agent["id"], skills=agent["skills"])
            self.flash("Agent saved.")
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
