"""Accounts: Kylon keys (generation, hashing), agents, skills and gates, and
the in-memory cache of them that the proxy path reads.

Keys are `pak_` + 43 URL-safe characters (256 random bits). Only their SHA-256
is stored: the key has full entropy, so a slow password hash would only add
latency to every call. Proxy calls read keys, skills and balances from
`AccountCache`; a miss is looked up on the database thread, and a background
refresh re-reads every cached entry every `cache_refresh_seconds`, which bounds
how long a revocation or a skill change made by another process takes here.
"""

import datetime
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from .controls import NO_LIMITS, Limits, limits_of
from .credits import KeyLimits
from .db import repeat
from .digest import sha256_hex
from .gates import GateTable  # noqa: F401 (kylon.auth.GateTable, as before)
from .models import Agent, AgentSkill, ApiKey, CreditHold, Gate, KeyHold, utcnow
from .periods import key_spend


KEY_PREFIX = "pak_"
# Unknown keys are remembered briefly so a flood of bad keys cannot turn into a
# flood of database queries.
NEGATIVE_TTL = 5.0
NEGATIVE_MAX = 10000


def generate_key():
    return KEY_PREFIX + secrets.token_urlsafe(32)


# Keys, and what Kylon issues on a key's behalf (upload session tokens), are kept as their SHA-256.
hash_key = sha256_hex


def key_display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 8]


@dataclass
class KeyEntry:
    key_id: int
    agent_id: int
    expires_at: object  # naive UTC datetime or None
    revoked: bool
    # The operator's controls (kylon/controls.py).
    limits: Limits = NO_LIMITS
    credit_limit: Decimal | None = None
    limit_reset: str = "none"
    # As the operator named it, and its first characters (the agent's own view).
    name: str = ""
    prefix: str = ""


@dataclass
class AgentEntry:
    agent_id: int
    name: str
    skills: frozenset
    # The agent's balance as read with it (handed to credits.Balances).
    db_balance: Decimal
    limits: Limits = NO_LIMITS


def _load_keys(hashes):
    rows = list(ApiKey.select().where(ApiKey.key_hash.in_(list(hashes))))
    return {
        r.key_hash: KeyEntry(r.id, r.agent_id, r.expires_at, r.revoked_at is not None, limits_of(r),
                             r.credit_limit, r.limit_reset, r.name, r.prefix)
        for r in rows
    }


def _load_keys_and_spend(hashes, key_limits):
    """The keys, and what those with a credit limit spent in their period:
    ({hash: KeyEntry}, starts, spent) for KeyLimits.set_spent."""
    keys = _load_keys(hashes) if hashes else {}
    starts = key_limits.starts(keys.values())
    return keys, starts, key_spend(starts) if starts else {}


def _load_agents(agent_ids):
    agents = {}
    for a in Agent.select().where(Agent.id.in_(list(agent_ids))):
        agents[a.id] = AgentEntry(a.id, a.name, frozenset(), a.credits, limits_of(a))
    skills = {}
    for s in AgentSkill.select().where(AgentSkill.agent.in_(list(agent_ids))):
        skills.setdefault(s.agent_id, set()).add(s.skill)
    for agent_id, entry in agents.items():
        entry.skills = frozenset(skills.get(agent_id, ()))
    return agents


def _load_gates():
    return {(g.provider, g.route): g.skill for g in Gate.select()}


def _publish_holds(process_id, holds, ids, stale_after, table=CreditHold, column="agent_id"):
    """Write this process's holds, read the other processes' (stale rows of a
    process that died are ignored and removed): per agent in CreditHold, per
    key with a credit limit in KeyHold."""
    now = utcnow()
    owner = getattr(table, column)
    table.delete().where((table.process_id == process_id) | (table.updated_at < now - stale_after)).execute()
    if holds:
        table.insert_many(
            [{"process_id": process_id, column: a, "amount": amount, "updated_at": now} for a, amount in holds.items()]
        ).execute()
    elsewhere = defaultdict(Decimal)
    if ids:
        query = table.select(owner, table.amount).where((table.process_id != process_id) & owner.in_(list(ids)))
        for owner_id, amount in query.tuples():
            elsewhere[owner_id] += amount
    return elsewhere


def _touch_keys(key_ids):
    ApiKey.update(last_used_at=utcnow()).where(ApiKey.id.in_(list(key_ids))).execute()


class AccountCache:
    def __init__(self, db_worker, balances, refresh_seconds=2.0, key_limits=None):
        self.db = db_worker
        # The agents' credits (credits.Balances): their committed balances are
        # read here, with the agents.
        self.balances = balances
        # The keys' credit limits (credits.KeyLimits): what each key with one
        # spent in its period is read here, with the keys.
        self.key_limits = key_limits if key_limits is not None else KeyLimits()
        self.refresh_seconds = refresh_seconds
        self.keys = {}  # key hash -> KeyEntry
        self.agents = {}  # agent id -> AgentEntry
        self.gates = GateTable()
        self._unknown = {}  # key hash -> time it was found unknown
        self._used_keys = set()
        self._task = None
        self.process_id = secrets.token_hex(8)

    # -- proxy path -------------------------------------------------------
    async def lookup(self, key):
        """(KeyEntry, AgentEntry) for a valid key, or (None, reason)."""
        if not key or not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None, "invalid"
        return await self.lookup_hash(hash_key(key))

    async def lookup_hash(self, digest):
        """lookup() by the key's hash, for calls standing on something Kylon
        issued to a key (an upload session) rather than on the key itself."""
        entry = self.keys.get(digest)
        if entry is None:
            seen = self._unknown.get(digest)
            if seen is not None and time.monotonic() - seen < NEGATIVE_TTL:
                return None, "invalid"
            found, starts, spent = await self.db.run(_load_keys_and_spend, [digest], self.key_limits)
            entry = found.get(digest)
            if entry is None:
                if len(self._unknown) >= NEGATIVE_MAX:
                    self._unknown.clear()
                self._unknown[digest] = time.monotonic()
                return None, "invalid"
            if entry.agent_id not in self.agents:
                for agent_id, loaded in (await self.db.run(_load_agents, [entry.agent_id])).items():
                    # Another lookup may have loaded it meanwhile: keep that entry.
                    if agent_id not in self.agents:
                        self.agents[agent_id] = loaded
                        self.balances.set_committed(agent_id, loaded.db_balance)
            self.keys[digest] = entry
            self.key_limits.set_spent((entry,), starts, spent)
        if entry.revoked:
            return None, "revoked"
        if entry.expires_at is not None and entry.expires_at <= utcnow():
            return None, "expired"
        agent = self.agents.get(entry.agent_id)
        if agent is None:
            return None, "invalid"
        self._used_keys.add(entry.key_id)
        return entry, agent

    # -- changes made by this process's admin API: effective at once --------
    def forget_key(self, key_hash):
        self.keys.pop(key_hash, None)

    def revoke_key_id(self, key_id):
        for entry in self.keys.values():
            if entry.key_id == key_id:
                entry.revoked = True

    def update_agent(self, agent_id, skills=None, db_balance=None):
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        if skills is not None:
            agent.skills = frozenset(skills)
        if db_balance is not None:
            # The admin read the balance after its own committed change; the
            # writer may still hold debits for this agent, which stay unflushed.
            self.balances.set_committed(agent_id, db_balance)

    def set_gates(self, rules):
        self.gates = GateTable(dict(rules))

    # -- background refresh ------------------------------------------------
    async def refresh(self):
        hashes = list(self.keys)
        agent_ids = {e.agent_id for e in self.keys.values()} | set(self.agents)
        used, self._used_keys = self._used_keys, set()

        holds = self.balances.holds()
        key_holds = self.key_limits.holds()
        stale_after = datetime.timedelta(seconds=max(3 * self.refresh_seconds, 5))

        def work():
            if used:
                _touch_keys(used)
            keys, starts, spent = _load_keys_and_spend(hashes, self.key_limits)
            agents = _load_agents(agent_ids) if agent_ids else {}
            elsewhere = _publish_holds(self.process_id, holds, agent_ids, stale_after)
            keys_elsewhere = _publish_holds(self.process_id, key_holds, list(starts), stale_after, KeyHold, "key_id")
            return keys, agents, _load_gates(), elsewhere, starts, spent, keys_elsewhere

        keys, agents, gates, elsewhere, starts, spent, keys_elsewhere = await self.db.run(work)
        # Keys deleted from the database disappear; the rest are replaced.
        for digest in hashes:
            if digest in keys:
                self.keys[digest] = keys[digest]
            else:
                self.keys.pop(digest, None)
        for agent_id, fresh in agents.items():
            current = self.agents.get(agent_id)
            if current is None:
                current = self.agents[agent_id] = fresh
            else:
                # Updated in place: calls in flight hold a reference to this entry.
                current.name, current.skills, current.limits = fresh.name, fresh.skills, fresh.limits
            self.balances.set_committed(agent_id, fresh.db_balance)
        self.balances.set_held_elsewhere(agent_ids, elsewhere)
        self.key_limits.set_spent(keys.values(), starts, spent)
        self.key_limits.set_held_elsewhere(starts, keys_elsewhere)
        self.gates = GateTable(gates)

    def start(self):
        self._task = repeat(self.refresh_seconds, self.refresh, "cache refresh")

    def stop(self):
        if self._task is not None:
            self._task.cancel()

