"""Every agent's credits as this process sees them: the balance last read
from the database, the debits charged here but not yet committed, and the
holds of calls still running (this process's and, as published through the
database, the other processes').

`Balances` is the one owner of these figures: a proxied call holds and
releases on its agent's `Balance` (taken from here), the usage writer charges and reports committed debits, the account cache
and the admin handlers set the committed balance they read.
"""

from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)


@dataclass(slots=True)
class Balance:
    committed: Decimal = ZERO  # the database's balance, as last read
    unflushed: Decimal = ZERO  # charged here, not yet committed
    held: Decimal = ZERO  # held by this process's running calls
    held_elsewhere: Decimal = ZERO  # held by other processes' calls

    @property
    def balance(self):
        return self.committed - self.unflushed

    @property
    def available(self):
        """What new calls may still use: the balance less every hold."""
        return self.committed - self.unflushed - self.held - self.held_elsewhere

    def hold(self, amount):
        """Hold `amount` for a call about to start (admission checked it fits)."""
        self.held += amount

    def release(self, amount):
        self.held -= amount


class Balances:
    def __init__(self):
        self.agents = {}  # agent id -> Balance

    def of(self, agent_id):
        balance = self.agents.get(agent_id)
        if balance is None:
            balance = self.agents[agent_id] = Balance()
        return balance

    def available(self, agent_id):
        return self.of(agent_id).available

    # -- holds (a call holds and releases on its agent's Balance) ----------------
    def holds(self):
        """This process's holds, agent id -> amount (published for the others)."""
        return {agent_id: b.held for agent_id, b in self.agents.items() if b.held}

    def set_held_elsewhere(self, agent_ids, elsewhere):
        for agent_id in agent_ids:
            self.of(agent_id).held_elsewhere = elsewhere.get(agent_id, ZERO)

    # -- debits ------------------------------------------------------------------
    def charge(self, agent_id, credits):
        """A debit handed to the usage writer: seen at once in the balance."""
        self.of(agent_id).unflushed += credits

    def charged_written(self, agent_id, credits):
        """The usage writer committed that debit: it is now in the database's balance."""
        self.of(agent_id).unflushed -= credits

    def shown(self, agent):
        """An agent as an admin read it from the database (a dict with
        "credits"), its balance less this process's debits not yet committed.
        Called on the IOLoop once the read is back: a batch the database had
        committed before the read has been reported by then (one database
        thread, answers in order), so no debit counts twice or not at all."""
        balance = self.agents.get(agent["id"])
        if balance is None or not balance.unflushed:
            return agent
        return {**agent, "credits": str(Decimal(agent["credits"]) - balance.unflushed)}

    def set_committed(self, agent_id, value):
        """The database's balance, read after every debit committed so far
        (debits still pending stay unflushed)."""
        self.of(agent_id).committed = value
