"""Which agents the agents list marks as near a limit (admin_reports.near_limits)."""

from decimal import Decimal

from kylon.admin_reports import near_limits, threshold_amounts


def agent(agent_id, credits, thresholds=()):
    return {"id": agent_id, "credits": credits, "alert_thresholds": list(thresholds)}


def facts(last_grants=None, keys=(), shares=None):
    shares = shares or {}
    return {
        "last_grants": last_grants or {},
        "keys": [{"id": k, "agent_id": a, "prefix": f"pak_{k}"} for k, a in keys],
        "periods": {k: {"share": shares[k], "near": Decimal(str(shares[k])) >= Decimal("0.8")} for k, _ in keys},
    }


def test_thresholds_are_shares_of_the_last_grant_or_amounts():
    assert threshold_amounts(["20%", "5", "0"], Decimal("50")) == [Decimal(10), Decimal(5), Decimal(0)]
    # No grant yet: a share is of nothing, only the amounts count.
    assert threshold_amounts(["20%", "5"], None) == [Decimal(5)]


def test_near_a_threshold_the_low_balance_mark_or_a_key_limit():
    agents = [
        agent(1, "9.99", ["20%"]),  # 20% of 50 = 10: at or below it
        agent(2, "10.01", ["20%"]),  # above it, and above the low-balance mark
        agent(3, "0.50"),  # no thresholds: under 1.00
        agent(4, "100"),  # its key has used 80% of its limit
        agent(5, "100"),  # its key only 79%
    ]
    found = near_limits(agents, facts({1: Decimal(50), 2: Decimal(50)}, keys=[(40, 4), (50, 5)],
                                      shares={40: 0.8, 50: 0.79}))
    assert found == {
        1: ["balance at or below its alert threshold of 10"],
        3: ["balance under 1.00"],
        4: ["key pak_40… has used 80% of its credit limit"],
    }
