"""Every agent's credits as this process sees them: the balance last read
from the database, the debits charged here but not yet committed, and the
holds of calls still running (this process's and, as published through the
database, the other processes').

`Balances` is the one owner of these figures: a proxied call holds and
releases on its agent's `Balance` (taken from here), the usage writer charges and reports committed debits, the account cache
and the admin handlers set the committed balance they read.

`KeyLimits` keeps the same figures for each key with a credit limit, on the
same `Balance` arithmetic: what is "committed" there is the limit less what
the key spent in its current period (read from the rollups), so `available`
is what the key may still spend this period, less every hold.
"""

import datetime
from dataclasses import dataclass
from decimal import Decimal

from .models import utcnow
from .periods import next_reset, period_start

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

    def charged(self, credits):
        """A debit handed to the usage writer: seen at once."""
        self.unflushed += credits

    def written(self, credits):
        """The usage writer committed that debit: it moves into the committed
        figure, as the next read of the database will have it (reads and
        writes share one database thread, answered in order: a read made
        before the commit is set before this, one made after, after)."""
        self.unflushed -= credits
        self.committed -= credits


class Balances:
    entry = Balance

    def __init__(self):
        self.entries = {}  # agent id (key id in KeyLimits) -> Balance

    def of(self, agent_id):
        balance = self.entries.get(agent_id)
        if balance is None:
            balance = self.entries[agent_id] = self.entry()
        return balance

    def available(self, agent_id):
        return self.of(agent_id).available

    # -- holds (a call holds and releases on its agent's Balance) ----------------
    def holds(self):
        """This process's holds, id -> amount (published for the others)."""
        return {owner: b.held for owner, b in self.entries.items() if b.held}

    def set_held_elsewhere(self, ids, elsewhere):
        for owner in ids:
            self.of(owner).held_elsewhere = elsewhere.get(owner, ZERO)

    # -- debits ------------------------------------------------------------------
    def charge(self, agent_id, credits):
        """A debit handed to the usage writer: seen at once in the balance."""
        self.of(agent_id).charged(credits)

    def charged_written(self, agent_id, credits):
        """The usage writer committed that debit: it is now in the database's balance."""
        self.of(agent_id).written(credits)

    def shown(self, agent):
        """An agent as an admin read it from the database (a dict with
        "credits"), its balance less this process's debits not yet committed.
        Called on the IOLoop once the read is back: a batch the database had
        committed before the read has been reported by then (one database
        thread, answers in order), so no debit counts twice or not at all."""
        balance = self.entries.get(agent["id"])
        if balance is None or not balance.unflushed:
            return agent
        return {**agent, "credits": str(Decimal(agent["credits"]) - balance.unflushed)}

    def set_committed(self, agent_id, value):
        """The database's balance, read after every debit committed so far
        (debits still pending stay unflushed)."""
        self.of(agent_id).committed = value


@dataclass(slots=True)
class KeyBalance(Balance):
    """A key's credit limit in its current period: `committed` is the limit
    less `spent` (the period's spend as the database had it)."""

    limit: Decimal = ZERO
    reset: str = "none"
    period_start: datetime.datetime | None = None  # None: the limit never resets
    resets_at: datetime.datetime | None = None
    spent: Decimal = ZERO

    def set(self, limit, reset, start, spent):
        self.limit, self.reset, self.spent, self.period_start = limit, reset, spent, start
        self.resets_at = None if start is None else next_reset(reset, start)
        self.committed = limit - spent

    def written(self, credits):
        Balance.written(self, credits)
        self.spent += credits

    @property
    def spent_this_period(self):
        return self.spent + self.unflushed

    @property
    def held_total(self):
        return self.held + self.held_elsewhere


class KeyLimits(Balances):
    """Each key with a credit limit, key id -> KeyBalance (holds, charges and
    the committed figure work as they do for agents). `clock` is naive UTC
    now: the period a key is in follows it."""

    entry = KeyBalance

    def __init__(self, clock=utcnow):
        super().__init__()
        self.clock = clock

    def current(self, key):
        """The KeyBalance of a key (an auth.KeyEntry with a credit limit), in
        the period the clock is in: at a period's end its spend starts from
        zero at once (the last period's charges not yet written then count in
        this one until the next cache refresh reads the spend again: on the
        safe side)."""
        balance = self.of(key.key_id)
        now = self.clock() if balance.resets_at is not None else None
        if now is not None and now >= balance.resets_at:
            balance.set(balance.limit, balance.reset, period_start(balance.reset, now), ZERO)
        return balance

    def starts(self, keys):
        """{key id: its period's start} for the keys (auth.KeyEntry) with a
        credit limit, as the clock has it now: what periods.key_spend reads."""
        now = self.clock()
        return {k.key_id: period_start(k.limit_reset, now) for k in keys if k.credit_limit is not None}

    def set_spent(self, keys, starts, spent):
        """The keys' limits and what they spent since `starts` (read together
        on the database thread; a batch committed before that read has been
        reported by then, so no charge counts twice). A read made before the
        period rolled over here is of the last period: it leaves the spend at
        what the new period has."""
        for key in keys:
            if key.credit_limit is None or key.key_id not in starts:
                continue
            balance = self.of(key.key_id)
            start = starts[key.key_id]
            if (balance.reset == key.limit_reset and start is not None and balance.period_start is not None
                    and start < balance.period_start):
                balance.set(key.credit_limit, key.limit_reset, balance.period_start, balance.spent)
            else:
                balance.set(key.credit_limit, key.limit_reset, start, spent.get(key.key_id, ZERO))
