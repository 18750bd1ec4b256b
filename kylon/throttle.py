"""Slowing down repeated failures from one client address: bad proxy keys
(`Services.bad_keys`) and wrong admin tokens, on the log-in page and the admin
API alike (`Services.admin_tokens`, one count for both since they guard the
same secret).

After `free` failures, each further failure is answered only after a delay
that doubles, up to `max_delay`. The wait is an `asyncio.sleep`, never a
blocking one; addresses are forgotten after a quiet `forget_after` seconds,
and the table is bounded. `check` also takes the attempts from one address one
at a time, so parallel guesses gain nothing, and refuses outright a queue of
more than `max_waiting`."""

import asyncio
import math
import time


class FailureThrottle:
    def __init__(self, free=5, base_delay=0.1, max_delay=5.0, forget_after=600.0, max_clients=10000, max_waiting=3):
        self.free = free
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_clients = max_clients
        self.max_waiting = max_waiting
        self.clients = {}  # address -> (failures, time of the last failure)
        self.queues = {}  # address -> _Queue, only while attempts from it are being checked

    def failures(self, address):
        entry = self.clients.get(address)
        if entry is None or time.monotonic() - entry[1] > self.forget_after:
            return 0
        return entry[0]

    def record_failure(self, address):
        """Count a failure; returns how long to wait before answering it."""
        now = time.monotonic()
        if len(self.clients) >= self.max_clients:
            self.clients = {a: e for a, e in self.clients.items() if now - e[1] <= self.forget_after}
            if len(self.clients) >= self.max_clients:
                self.clients.clear()
        count = self.failures(address) + 1
        self.clients[address] = (count, now)
        return self.delay(count)

    def delay(self, failures):
        if failures <= self.free:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** (failures - self.free - 1))

    def forget(self, address):
        self.clients.pop(address, None)

    async def check(self, address, is_right):
        """One attempt from `address`: True when `is_right()` (its count is
        cleared), False after the failure's delay, None at once when
        `max_waiting` attempts from the address are already in line."""
        queue = self.queues.get(address)
        if queue is None:
            queue = self.queues[address] = _Queue()
        if queue.waiting >= self.max_waiting:
            return None
        queue.waiting += 1
        try:
            async with queue.lock:
                if is_right():
                    self.forget(address)
                    return True
                delay = self.record_failure(address)
                if delay:
                    await asyncio.sleep(delay)
                return False
        finally:
            queue.waiting -= 1
            if not queue.waiting and self.queues.get(address) is queue:
                del self.queues[address]

    def retry_after(self, address):
        """Whole seconds a refused client should wait before it tries again."""
        return max(1, math.ceil(self.delay(self.failures(address) + 1)))


class _Queue:
    def __init__(self):
        self.lock = asyncio.Lock()
        self.waiting = 0


def admin_token_throttle():
    """Wrong admin tokens: the first is answered at once, the next after
    0.5 s, then 1 s, 2 s, … up to 30 s; forgotten after 15 quiet minutes."""
    return FailureThrottle(free=1, base_delay=0.5, max_delay=30.0, forget_after=15 * 60, max_waiting=3)
