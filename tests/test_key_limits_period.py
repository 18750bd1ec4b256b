"""A key's credit limit at a period boundary, with a clock the test moves:
the account cache, the usage writer and the key ledger on the database
itself (SQLite and MariaDB), as a Kylon process runs them."""

import asyncio
import datetime
from decimal import Decimal

import pytest

from kylon.auth import AccountCache, hash_key, key_display_prefix
from kylon.billing import Price, Usage
from kylon.calls import admission
from kylon.credits import Balances, KeyLimits
from kylon.db import DatabaseWorker
from kylon.models import Agent, ApiKey, open_database
from kylon.usage import UsageWriter, write_batch

from .conftest import drop_database, scratch_database_url
from .test_usage_batches import record

T = datetime.datetime
KEY = "pak_" + "p" * 43
PER_CREDIT = Price.of(per_unit=1)


def spent(key_id, request_id, credits, started_at):
    return {**record(0, request_id, credits), "key_id": key_id, "started_at": started_at}


def costs(amount):
    return Usage(units=Decimal(amount), unit="credits")


@pytest.fixture(params=["sqlite", "mariadb"])
def worker(request, tmp_path_factory):
    url = scratch_database_url(request.param, tmp_path_factory)
    worker = DatabaseWorker(open_database(url))
    yield worker
    worker.close()
    drop_database(url)


def test_the_spend_starts_from_zero_at_the_period_boundary(worker):
    def setup():
        agent = Agent.create(name="clocked", credits=Decimal("100"))
        key = ApiKey.create(agent=agent, key_hash=hash_key(KEY), prefix=key_display_prefix(KEY),
                            credit_limit=Decimal("1"), limit_reset="daily")
        # Yesterday's spend is not today's.
        write_batch([{**spent(key.id, "req_yesterday", "0.05", T(2026, 12, 1, 12)), "agent_id": agent.id}])
        return agent.id, key.id

    agent_id, key_id = worker.run_sync(setup)
    now = [T(2026, 12, 2, 23, 59, 50)]
    key_limits = KeyLimits(clock=lambda: now[0])
    balances = Balances()

    async def scenario():
        cache = AccountCache(worker, balances, key_limits=key_limits)
        writer = UsageWriter(worker, balances)
        key, agent = await cache.lookup(KEY)
        balance = key_limits.current(key)
        assert balance.available == 1 and balance.period_start == T(2026, 12, 2)

        def charge(request_id, credits, started_at):
            writer.add({**spent(key_id, request_id, credits, started_at), "agent_id": agent_id}, balance)

        charge("req_late", "0.9", T(2026, 12, 2, 23, 59, 55))
        assert balance.available == Decimal("0.1")  # at once, before the batch is written
        hold, refusal = admission.check_hold(costs("0.5"), PER_CREDIT, balances.of(agent_id), balance)
        assert refusal.reason == "key_limit" and refusal.code == "key_limit_reached"
        assert refusal.message == ("Key credit limit reached: this call may cost up to 0.5 credits; the key has "
                                   "0.1 left of its limit of 1 credits a day (spent 0.9 this period, 0 held by its "
                                   "running calls). It resets at 2026-12-03T00:00:00Z.")
        await writer.flush()
        assert balance.available == Decimal("0.1")
        await cache.refresh()
        assert balance.available == Decimal("0.1") and balance.spent == Decimal("0.9")

        # Midnight: the new day's limit is whole at once, before any refresh.
        now[0] = T(2026, 12, 3, 0, 0, 0)
        assert key_limits.current(key).available == 1
        assert (balance.period_start, balance.resets_at) == (T(2026, 12, 3), T(2026, 12, 4))
        assert admission.check_hold(costs("0.5"), PER_CREDIT, balances.of(agent_id), balance)[1] is None
        # A read of the last period's spend that comes back after the roll is not taken for this one.
        key_limits.set_spent([key], {key_id: T(2026, 12, 2)}, {key_id: Decimal("0.9")})
        assert balance.available == 1
        await cache.refresh()
        assert balance.available == 1
        charge("req_early", "0.3", T(2026, 12, 3, 0, 0, 1))
        await writer.flush()
        await cache.refresh()
        assert balance.spent_this_period == Decimal("0.3") and balance.available == Decimal("0.7")

        # Monthly from now on: the month so far counts, every day of it.
        await worker.run(lambda: ApiKey.update(limit_reset="monthly").where(ApiKey.id == key_id).execute())
        await cache.refresh()
        key = cache.keys[hash_key(KEY)]
        assert key_limits.current(key).spent == Decimal("1.25")
        refusal = admission.check_credits(balances.of(agent_id), balance)
        assert refusal.message == ("Key credit limit reached: the key has 0 left of its limit of 1 credits a "
                                   "month (spent 1.25 this period, 0 held by its running calls). It resets at "
                                   "2027-01-01T00:00:00Z.")
        now[0] = T(2027, 1, 1)
        assert key_limits.current(key).available == 1
        await cache.refresh()
        assert key_limits.current(key).available == 1

    asyncio.run(scenario())
