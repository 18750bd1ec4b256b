"""The one policy for wrong credentials (kylon/throttle.py), without a server."""

import asyncio
import time

from kylon.throttle import FailureThrottle, admin_token_throttle


def test_failures_after_the_free_ones_wait_doubling_up_to_the_cap():
    throttle = FailureThrottle(free=2, base_delay=0.5, max_delay=3.0)
    delays = [throttle.record_failure("a") for _ in range(7)]
    assert delays == [0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    # Each address has a count of its own; a success forgets it.
    assert throttle.record_failure("b") == 0.0
    throttle.forget("a")
    assert throttle.failures("a") == 0 and throttle.failures("b") == 1


def test_admin_tokens_policy_is_the_old_login_one():
    """The first wrong token at once, then 0.5 s, 1 s, 2 s … at most 30 s."""
    throttle = admin_token_throttle()
    assert [throttle.delay(n) for n in (1, 2, 3, 4)] == [0.0, 0.5, 1.0, 2.0]
    assert throttle.delay(100) == 30.0
    assert throttle.forget_after == 15 * 60 and throttle.max_waiting == 3


def test_quiet_addresses_are_forgotten_and_the_table_is_bounded():
    throttle = FailureThrottle(free=0, forget_after=0.05, max_clients=3)
    throttle.record_failure("a")
    time.sleep(0.06)
    assert throttle.failures("a") == 0
    for address in ("b", "c", "d", "e"):
        throttle.record_failure(address)
    assert len(throttle.clients) <= 3 and throttle.failures("e") == 1


def test_check_delays_wrong_answers_and_a_right_one_clears_the_count():
    throttle = FailureThrottle(free=1, base_delay=0.1, max_delay=1.0)

    async def attempts():
        took = []
        for right in (False, False, False, True, False):
            started = time.monotonic()
            assert await throttle.check("a", lambda: right) is right
            took.append(time.monotonic() - started)
        return took

    took = asyncio.run(attempts())
    assert took[0] < 0.05 and 0.09 <= took[1] < 0.2 and 0.19 <= took[2] < 0.3
    # The right token is not held back, and afterwards the count starts again.
    assert took[3] < 0.05 and took[4] < 0.05
    assert throttle.queues == {}


def test_check_takes_one_attempt_per_address_at_a_time_and_refuses_a_long_queue():
    throttle = FailureThrottle(free=0, base_delay=0.1, max_delay=0.1, max_waiting=2)

    async def attempts():
        started = time.monotonic()

        async def other():
            right = await throttle.check("b", lambda: True)
            return right, time.monotonic() - started

        wrong = [throttle.check("a", lambda: False) for _ in range(4)]
        results = await asyncio.gather(*wrong, other())
        return results, time.monotonic() - started

    results, took = asyncio.run(attempts())
    # Two in line (0.1 s each, one after the other), the rest refused at once;
    # another address is not kept waiting behind them.
    assert results[:4] == [False, False, None, None]
    assert results[4][0] is True and results[4][1] < 0.05
    assert 0.19 <= took < 0.35
    assert throttle.failures("a") == 2 and throttle.retry_after("a") == 1
    assert throttle.queues == {}
