"""Slowing down repeated failures from one client address (bad proxy keys,
wrong admin tokens): after `free` failures, each further failure is answered
only after a delay that doubles, up to `max_delay`. The wait is an
`asyncio.sleep`, never a blocking one; addresses are forgotten after a quiet
`forget_after` seconds, and the table is bounded."""

import time


class FailureThrottle:
    def __init__(self, free=5, base_delay=0.1, max_delay=5.0, forget_after=600.0, max_clients=10000):
        self.free = free
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_clients = max_clients
        self.clients = {}  # address -> (failures, time of the last failure)

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
