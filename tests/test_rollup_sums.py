"""rollups.summed: each record counted once in each hour and day row of
every kind, whatever the mix of agents, keys, models and hours in a batch."""

import datetime
import itertools
import random
from collections import defaultdict
from decimal import Decimal

from kylon import rollups
from kylon.models import to_nano
from kylon.models.rollup import KINDS


def one_by_one(records):
    """The rows each record belongs to, summed one record at a time."""
    sums = defaultdict(lambda: [0, 0, 0, 0])
    for r in records:
        dims = {"agent_id": r["agent_id"], "key_id": r.get("key_id") or 0, "provider": r["provider"],
                "model": r.get("model") or "", "status": r["status"]}
        hour = r["started_at"].replace(minute=0, second=0, microsecond=0)
        for period, start in (("h", hour), ("d", hour.replace(hour=0))):
            for kind, kept in KINDS.items():
                key = (period + kind, str(start)) + tuple(
                    dims[d] if d in kept else rollups.BLANK[d] for d in rollups.KEY[2:])
                row = sums[key]
                for i, v in enumerate((1, r.get("input_tokens") or 0, r.get("output_tokens") or 0,
                                       to_nano(r.get("credits") or 0))):
                    row[i] += v
    return dict(sums)


def test_grouped_sums_match_record_by_record():
    rng = random.Random(7)
    start = datetime.datetime(2026, 12, 1, 22, 30)
    records = []
    for i, (agent, key, model, status) in enumerate(itertools.product((1, 2), (None, 5, 6), ("a", "", "b"),
                                                                       ("completed", "upstream_error"))):
        for _ in range(rng.randint(1, 4)):
            records.append({
                "agent_id": agent, "key_id": key, "provider": rng.choice(("openai", "gemini")), "model": model,
                "status": status, "input_tokens": rng.choice((None, 0, 3, 1000)),
                "output_tokens": rng.randint(0, 50),
                "credits": rng.choice((Decimal("0"), Decimal("0.000000001"), Decimal("1.234567891"))),
                "started_at": start + datetime.timedelta(minutes=rng.randint(0, 180), microseconds=i),
            })
    assert dict(rollups.summed(records)) == one_by_one(records)
    assert len({r["started_at"].date() for r in records}) == 2  # the batch spans midnight
