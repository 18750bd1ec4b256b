"""Rate limits per agent and per key: requests a minute (`rpm_limit`), input +
output tokens a minute (`tpm_limit`) and calls at once (`concurrency_limit`),
holding across the Kylon processes of one database (docs/controls.md).

Windows are fixed clock minutes (Unix time // 60, UTC). A shared store (the
database, or Redis with KYLON_REDIS_URL) keeps, per subject ("key:12",
"agent:7") and minute, how many requests and tokens all processes together
have *claimed*; a claim is granted only up to the limit. Each process spends
its claimed lease in memory: admission is a few dict lookups and integer
compares, and only a call finding the lease empty waits for one more claim
(off the IOLoop: the database thread, or Redis's asyncio client). So the
requests admitted in a minute, over all processes, never exceed `rpm_limit`
(overshoot 0); what a process claimed and did not spend is only unused.

Tokens: a call holds its likely use (input estimate + output limit, the
credits hold's Usage) from the moment its body is read, and at its end the
hold is replaced by the tokens its usage record reports, in the minute the
call started (a minute already over is left as it was). Tokens admitted in a
minute never exceed `tpm_limit` but by what calls used beyond their holds.

Concurrency: counted in memory per process (exact in one process); each
process publishes its running counts every refresh and counts the others'.
Across P processes, calls started within one refresh interval are not yet
seen by the others: at most P × `concurrency_limit` run at once then.

A store that fails (the database away) does not stop calls: the process goes
on counting from the last totals it saw, as if alone (a per-process limit),
logged and counted in kylon_ratelimit_store_failures_total. Redis away: the
database store serves (kylon_ratelimit_store_fallbacks_total), Redis is
tried again after REDIS_RETRY_SECONDS.
"""

import asyncio
import datetime
import logging
import math
import time

import peewee

from . import metrics
from .calls.admission import Refusal
from .db import repeat
from .models import RateRunning, RateWindow, utcnow

log = logging.getLogger("kylon.ratelimits")

WINDOW = 60
# A lease claims this share of the limit (at least 1): a process leaves at
# most this much of a minute unused, and claims at most ~20 times a minute.
LEASE_SHARE = 20
REDIS_RETRY_SECONDS = 5.0
KINDS = {"key": "this Kylon key", "agent": "this agent"}


def rate_limited(limits):
    return limits.rpm is not None or limits.tpm is not None or limits.concurrency is not None


def lease_block(limit):
    return max(1, limit // LEASE_SHARE)


class Subject:
    """One agent's or key's counters in this process, for the current minute."""

    __slots__ = ("kind", "id", "name", "window", "requests_left", "tokens_left", "requests_out", "tokens_out",
                 "store_requests", "store_tokens", "running", "elsewhere", "concurrency", "claiming", "last_window")

    def __init__(self, kind, subject_id):
        self.kind, self.id, self.name = kind, subject_id, f"{kind}:{subject_id}"
        self.window = None
        self.running = 0  # calls running here
        self.elsewhere = 0  # calls running in the other processes (as last published)
        self.concurrency = None  # the concurrency limit last seen, for publishing
        self.claiming = None  # a Future while a claim is under way
        self.roll(None)

    def roll(self, window):
        """A new minute: the lease of the last one is gone."""
        if self.window != window:
            self.window = self.last_window = window
            self.requests_left = self.tokens_left = 0  # claimed and not spent (tokens below 0: owed)
            # The limit at which the store had no more to give this minute (0:
            # not out); a limit changed since gets another claim.
            self.requests_out = self.tokens_out = 0
            self.store_requests = self.store_tokens = 0  # all processes' claims, as of this one's last

    def requests_remaining(self, limit):
        return max(0, limit - self.store_requests + self.requests_left)

    def tokens_remaining(self, limit):
        return max(0, limit - self.store_tokens + self.tokens_left)


class RateRefusal(Refusal):
    """A 429 for a rate limit, with its Retry-After and x-ratelimit-* headers."""

    def __new__(cls, message, headers):
        self = super().__new__(cls, 429, message, "rate_limit")
        self.headers = headers
        return self


class Ticket:
    """An admitted call's part in the counters, handed back at its end."""

    __slots__ = ("pairs", "window", "tokens", "ended")

    def __init__(self, pairs, window):
        self.pairs = pairs  # [(Subject, Limits)]
        self.window = window  # the minute its tokens count in
        self.tokens = 0  # tokens held
        self.ended = False


class Claim:
    """admit_now/hold_now's answer when a lease is short: claim, then try again."""

    __slots__ = ("needs",)

    def __init__(self, needs):
        self.needs = needs  # [(Subject, Limits, requests wanted, tokens wanted)]


class RateLimits:
    def __init__(self, store, process_id, refresh_seconds=2.0, clock=time.time):
        self.store = store
        self.process_id = process_id
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.subjects = {}  # (kind, id) -> Subject
        self._task = None
        self._cleaned = None

    # -- the proxy path ---------------------------------------------------------
    def pairs(self, key, agent):
        pairs = []
        if rate_limited(key.limits):
            pairs.append((self._subject("key", key.key_id), key.limits))
        if rate_limited(agent.limits):
            pairs.append((self._subject("agent", agent.agent_id), agent.limits))
        return pairs

    def _subject(self, kind, subject_id):
        subject = self.subjects.get((kind, subject_id))
        if subject is None:
            subject = self.subjects[(kind, subject_id)] = Subject(kind, subject_id)
        return subject

    def admit_now(self, key, agent):
        """A Ticket (the call is counted), a Refusal (429), or a Claim to
        await (`admit`) before trying again. Call only when rate_limited()
        holds for the key's or the agent's limits."""
        now = self.clock()
        window = int(now // WINDOW)
        pairs = self.pairs(key, agent)
        needs = None
        for subject, limits in pairs:
            if subject.window != window:
                subject.roll(window)
            subject.concurrency = limits.concurrency
            if limits.concurrency is not None and subject.running + subject.elsewhere >= limits.concurrency:
                return self.refusal(pairs, subject, limits, "concurrency", now)
            want_requests = want_tokens = 0
            if limits.rpm is not None and subject.requests_left < 1:
                if subject.requests_out == limits.rpm:
                    return self.refusal(pairs, subject, limits, "rpm", now)
                want_requests = lease_block(limits.rpm)
            if limits.tpm is not None and subject.tokens_left < 1:
                if subject.tokens_out == limits.tpm:
                    return self.refusal(pairs, subject, limits, "tpm", now)
                want_tokens = lease_block(limits.tpm) - subject.tokens_left
            if want_requests or want_tokens:
                needs = needs or []
                needs.append((subject, limits, want_requests, want_tokens))
        if needs:
            return Claim(needs)
        for subject, limits in pairs:
            subject.running += 1
            if limits.rpm is not None:
                subject.requests_left -= 1
        return Ticket(pairs, window)

    async def admit(self, key, agent):
        """admit_now, claiming leases until it admits or refuses."""
        while True:
            result = self.admit_now(key, agent)
            if not isinstance(result, Claim):
                return result
            await self.claim(result)

    def hold_now(self, ticket, tokens):
        """The call's token hold (its body is read): None once held, a
        Refusal, or a Claim to await (`hold`)."""
        if ticket.ended:
            return None
        now = self.clock()
        window = int(now // WINDOW)
        needs = None
        for subject, limits in ticket.pairs:
            if limits.tpm is None:
                continue
            subject.roll(window)
            if subject.tokens_left < tokens:
                if tokens > limits.tpm or subject.tokens_out == limits.tpm:
                    return self.refusal(ticket.pairs, subject, limits, "tpm", now, tokens)
                needs = needs or []
                needs.append((subject, limits, 0, max(lease_block(limits.tpm), tokens) - subject.tokens_left))
        if needs:
            return Claim(needs)
        for subject, limits in ticket.pairs:
            if limits.tpm is not None:
                subject.tokens_left -= tokens
        ticket.window, ticket.tokens = window, tokens
        return None

    async def hold(self, ticket, tokens):
        while True:
            result = self.hold_now(ticket, tokens)
            if not isinstance(result, Claim):
                return result
            await self.claim(result)

    def end(self, ticket, used_tokens):
        """The call is over: it no longer runs; its hold is replaced by the
        tokens it used, in the minute it started (if that minute is still on)."""
        if ticket.ended:
            return
        ticket.ended = True
        for subject, limits in ticket.pairs:
            subject.running -= 1
            if limits.tpm is not None and subject.window == ticket.window:
                subject.tokens_left += ticket.tokens - used_tokens

    async def claim(self, claim):
        await asyncio.gather(*(self._claim(*need) for need in claim.needs))

    async def _claim(self, subject, limits, want_requests, want_tokens):
        if subject.claiming is not None:
            # One claim at a time per subject: the callers waiting try again after it.
            await asyncio.shield(subject.claiming)
            return
        window = subject.window
        rpm, tpm = limits.rpm or 0, limits.tpm or 0
        subject.claiming = asyncio.get_running_loop().create_future()
        try:
            try:
                granted_requests, granted_tokens, total_requests, total_tokens = await self.store.claim(
                    subject.name, window, want_requests, want_tokens, rpm, tpm
                )
            except Exception as e:
                # The store is away: go on from the totals last seen, as if alone.
                log.warning("rate-limit store failed (%s): counting %s in this process alone", e, subject.name)
                metrics.RATE_STORE_FAILURES.inc()
                granted_requests = min(want_requests, max(0, rpm - subject.store_requests))
                granted_tokens = min(want_tokens, max(0, tpm - subject.store_tokens))
                total_requests = subject.store_requests + granted_requests
                total_tokens = subject.store_tokens + granted_tokens
            if subject.window == window:
                subject.requests_left += granted_requests
                subject.tokens_left += granted_tokens
                subject.store_requests, subject.store_tokens = total_requests, total_tokens
                if granted_requests < want_requests:
                    subject.requests_out = rpm
                if granted_tokens < want_tokens:
                    subject.tokens_out = tpm
        finally:
            future, subject.claiming = subject.claiming, None
            future.set_result(None)

    # -- what the client is told ------------------------------------------------
    def refusal(self, pairs, subject, limits, what, now, tokens=0):
        reset = reset_seconds(now)
        at = datetime.datetime.fromtimestamp((int(now // WINDOW) + 1) * WINDOW, datetime.timezone.utc)
        whose = KINDS[subject.kind]
        resets = f"it resets in {reset}s (at {at:%H:%M:%S} UTC)"
        if what == "concurrency":
            running = subject.running + subject.elsewhere
            message = (f"Rate limit reached: {whose}'s concurrent calls (concurrency_limit {limits.concurrency}): "
                       f"{running} running; try again when one ends.")
            retry_after = 1
        elif what == "rpm":
            used = limits.rpm - subject.requests_remaining(limits.rpm)
            message = (f"Rate limit reached: {whose}'s requests per minute (rpm_limit {limits.rpm}): "
                       f"{used} of {limits.rpm} used this minute; {resets}.")
            retry_after = reset
        elif tokens > limits.tpm:
            message = (f"This call may use up to {tokens} tokens (its input estimate and output limit), more than "
                       f"{whose}'s tokens per minute (tpm_limit {limits.tpm}): ask for fewer output tokens.")
            retry_after = reset
        else:
            used = limits.tpm - subject.tokens_remaining(limits.tpm)
            needed = f"; this call may use up to {tokens}" if tokens else ""
            message = (f"Rate limit reached: {whose}'s tokens per minute (tpm_limit {limits.tpm}): "
                       f"{used} of {limits.tpm} used or held this minute{needed}; {resets}.")
            retry_after = reset
        metrics.child(metrics.RATE_LIMITED, what, subject.kind).inc()
        headers = self.headers(pairs, now)
        headers["Retry-After"] = str(retry_after)
        return RateRefusal(message, headers)

    def headers(self, pairs, now=None):
        """OpenAI's x-ratelimit-* headers for the tightest of the call's
        request and token limits (none for a limit not set)."""
        requests = tokens = None  # (remaining, limit) of the tightest
        for subject, limits in pairs:
            if limits.rpm is not None:
                remaining = max(0, limits.rpm - subject.store_requests + subject.requests_left)
                if requests is None or remaining < requests[0]:
                    requests = (remaining, limits.rpm)
            if limits.tpm is not None:
                remaining = max(0, limits.tpm - subject.store_tokens + subject.tokens_left)
                if tokens is None or remaining < tokens[0]:
                    tokens = (remaining, limits.tpm)
        headers = {}
        if requests is None and tokens is None:
            return headers
        reset = format_reset(reset_seconds(self.clock() if now is None else now))
        if requests is not None:
            headers["x-ratelimit-limit-requests"] = str(requests[1])
            headers["x-ratelimit-remaining-requests"] = str(requests[0])
            headers["x-ratelimit-reset-requests"] = reset
        if tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(tokens[1])
            headers["x-ratelimit-remaining-tokens"] = str(tokens[0])
            headers["x-ratelimit-reset-tokens"] = reset
        return headers

    def status(self, key, agent):
        """The limits of a key and its agent, what is left of them and when
        they reset, JSON-ready (the agent's own view):
        {"window_seconds": 60, "key": {...}, "agent": {...}}, each with
        "rpm" and "tpm" as {"limit", "remaining", "resets_in_seconds",
        "resets_at"} and "concurrency" as {"limit", "running", "remaining"}
        (None where no limit is set). Remaining is as this process last saw
        the store: exact on one process; with several, what the others
        claimed since this process's last claim is not counted yet."""
        now = self.clock()
        window = int(now // WINDOW)
        reset = reset_seconds(now)
        resets_at = datetime.datetime.fromtimestamp((window + 1) * WINDOW, datetime.timezone.utc)
        resets_at = resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        out = {"window_seconds": WINDOW}
        for kind, subject_id, limits in (("key", key.key_id, key.limits), ("agent", agent.agent_id, agent.limits)):
            subject = self.subjects.get((kind, subject_id)) or Subject(kind, subject_id)
            subject.roll(window)
            view = {"rpm": None, "tpm": None, "concurrency": None}
            if limits.rpm is not None:
                view["rpm"] = {"limit": limits.rpm, "remaining": subject.requests_remaining(limits.rpm),
                               "resets_in_seconds": reset, "resets_at": resets_at}
            if limits.tpm is not None:
                view["tpm"] = {"limit": limits.tpm, "remaining": subject.tokens_remaining(limits.tpm),
                               "resets_in_seconds": reset, "resets_at": resets_at}
            if limits.concurrency is not None:
                running = subject.running + subject.elsewhere
                view["concurrency"] = {"limit": limits.concurrency, "running": running,
                                       "remaining": max(0, limits.concurrency - running)}
            out[kind] = view
        return out

    # -- publishing concurrency, forgetting old subjects --------------------------
    async def refresh(self):
        window = int(self.clock() // WINDOW)
        for name, subject in list(self.subjects.items()):
            # Idle for two minutes, nothing running: its state is worth nothing.
            if subject.running == 0 and subject.claiming is None and (subject.last_window or 0) < window - 1:
                del self.subjects[name]
        if not self.subjects:
            return  # no limit in use here: no work for the store
        running = {s.name: s.running for s in self.subjects.values() if s.concurrency is not None}
        stale_after = max(3 * self.refresh_seconds, 5)
        # Minutes past are dropped from the store once a minute.
        clean, self._cleaned = (window if self._cleaned != window else None), window
        if not running and clean is None:
            return
        elsewhere = await self.store.publish(self.process_id, running, stale_after, clean)
        for subject in self.subjects.values():
            if subject.concurrency is not None:
                subject.elsewhere = elsewhere.get(subject.name, 0)

    def start(self):
        self._task = repeat(self.refresh_seconds, self.refresh, "rate-limit refresh")

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
        # Nothing runs here any more: the others stop counting this process's calls.
        running = {s.name: 0 for s in self.subjects.values() if s.concurrency is not None}
        try:
            await self.store.publish(self.process_id, running, max(3 * self.refresh_seconds, 5), None)
        except Exception as e:
            log.warning("rate-limit store: could not withdraw this process's running calls: %s", e)
        close = getattr(self.store, "close", None)
        if close is not None:
            await close()


def reset_seconds(now):
    """Whole seconds until the current minute ends (1 to 60)."""
    return max(1, math.ceil(WINDOW - now % WINDOW))


def format_reset(seconds):
    """OpenAI's form: "6s", "1m0s"."""
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


# -- the database store ---------------------------------------------------------
def _claim_rows(subject, window, want_requests, want_tokens, rpm, tpm):
    """Grant up to what is wanted, within the limits, by compare-and-set on
    the (subject, window) row: (granted requests, granted tokens, total
    requests, total tokens claimed after it)."""
    where = (RateWindow.subject == subject) & (RateWindow.window == window)
    for _ in range(50):
        row = RateWindow.select(RateWindow.requests, RateWindow.tokens).where(where).first()
        used_requests, used_tokens = (row.requests, row.tokens) if row is not None else (0, 0)
        granted_requests = max(0, min(want_requests, rpm - used_requests))
        granted_tokens = max(0, min(want_tokens, tpm - used_tokens))
        if not (granted_requests or granted_tokens):
            return 0, 0, used_requests, used_tokens
        total_requests, total_tokens = used_requests + granted_requests, used_tokens + granted_tokens
        if row is None:
            try:
                RateWindow.insert(subject=subject, window=window, requests=total_requests,
                                  tokens=total_tokens).execute()
            except peewee.IntegrityError:
                continue  # another process made the row first
            return granted_requests, granted_tokens, total_requests, total_tokens
        changed = (
            RateWindow.update(requests=total_requests, tokens=total_tokens)
            .where(where & (RateWindow.requests == used_requests) & (RateWindow.tokens == used_tokens))
            .execute()
        )
        if changed:
            return granted_requests, granted_tokens, total_requests, total_tokens
    raise RuntimeError(f"rate-limit claim for {subject}: too much contention")


def _publish_rows(process_id, running, stale_after, window):
    """This process's running calls in, the others' out (rows of processes
    that stopped refreshing are ignored and removed); minutes past dropped."""
    now = utcnow()
    RateRunning.delete().where(
        (RateRunning.process_id == process_id) | (RateRunning.updated_at < now - datetime.timedelta(seconds=stale_after))
    ).execute()
    rows = [{"process_id": process_id, "subject": s, "running": n, "updated_at": now} for s, n in running.items() if n]
    if rows:
        RateRunning.insert_many(rows).execute()
    elsewhere = {}
    if running:
        query = RateRunning.select(RateRunning.subject, RateRunning.running).where(
            (RateRunning.process_id != process_id) & RateRunning.subject.in_(list(running))
        )
        for row in query:
            elsewhere[row.subject] = elsewhere.get(row.subject, 0) + row.running
    if window is not None:
        RateWindow.delete().where(RateWindow.window < window - 1).execute()
    return elsewhere


class DatabaseStore:
    name = "database"

    def __init__(self, db_worker):
        self.db = db_worker

    async def claim(self, subject, window, want_requests, want_tokens, rpm, tpm):
        granted = await self.db.run(_claim_rows, subject, window, want_requests, want_tokens, rpm, tpm)
        metrics.child(metrics.RATE_CLAIMS, self.name).inc()
        return granted

    async def publish(self, process_id, running, stale_after, window):
        return await self.db.run(_publish_rows, process_id, running, stale_after, window)


# -- the Redis store (KYLON_REDIS_URL) --------------------------------------------
# KEYS[1] the (subject, minute) hash; ARGV: requests and tokens wanted, the
# limits, the hash's time to live.
REDIS_CLAIM = """
local used_r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
local used_t = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local gr = math.max(0, math.min(tonumber(ARGV[1]), tonumber(ARGV[3]) - used_r))
local gt = math.max(0, math.min(tonumber(ARGV[2]), tonumber(ARGV[4]) - used_t))
if gr > 0 then redis.call('HINCRBY', KEYS[1], 'r', gr) end
if gt > 0 then redis.call('HINCRBY', KEYS[1], 't', gt) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {gr, gt, used_r + gr, used_t + gt}
"""
# KEYS: one hash per subject (process id -> "running:time"); ARGV: this
# process's id, now, the age after which a process's count is stale, then
# its running count per key. Returns the other processes' sums.
REDIS_PUBLISH = """
local me, now, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[3 + i])
  if n > 0 then redis.call('HSET', key, me, n .. ':' .. ARGV[2]) else redis.call('HDEL', key, me) end
  redis.call('EXPIRE', key, 120)
  local sum, all = 0, redis.call('HGETALL', key)
  for j = 1, #all, 2 do
    if all[j] ~= me then
      local count, at = string.match(all[j + 1], '(%d+):(.+)')
      if tonumber(at) >= now - stale then sum = sum + tonumber(count) else redis.call('HDEL', key, all[j]) end
    end
  end
  out[i] = sum
end
return out
"""
REDIS_PREFIX = "kylon:ratelimit:"


class RedisStore:
    """The counters in Redis (one round trip a claim, atomic in a Lua
    script). When Redis does not answer, the database store serves, and
    Redis is tried again after REDIS_RETRY_SECONDS: in a minute where
    processes used both, each store grants up to the limit (at most twice it)."""

    name = "redis"

    def __init__(self, url, fallback, timeout=0.5):
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.client = redis.asyncio.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                             retry=Retry(NoBackoff(), 0))
        self.claim_script = self.client.register_script(REDIS_CLAIM)
        self.publish_script = self.client.register_script(REDIS_PUBLISH)
        self.fallback = fallback
        self.away_until = None  # time.monotonic() until which the database serves

    async def _either(self, redis_call, fallback_call):
        if self.away_until is not None and time.monotonic() < self.away_until:
            metrics.RATE_STORE_FALLBACKS.inc()
            return await fallback_call()
        try:
            result = await redis_call()
        except Exception as e:
            if self.away_until is None:
                log.warning("Redis away (%s): rate-limit counters go to the database", e)
            self.away_until = time.monotonic() + REDIS_RETRY_SECONDS
            metrics.RATE_STORE_FALLBACKS.inc()
            return await fallback_call()
        if self.away_until is not None:
            log.warning("Redis is back: rate-limit counters go to Redis again")
            self.away_until = None
        return result

    async def claim(self, subject, window, want_requests, want_tokens, rpm, tpm):
        async def in_redis():
            key = f"{REDIS_PREFIX}{subject}:{window}"
            result = await self.claim_script(keys=[key], args=[want_requests, want_tokens, rpm, tpm, 2 * WINDOW])
            metrics.child(metrics.RATE_CLAIMS, self.name).inc()
            return tuple(int(n) for n in result)

        return await self._either(
            in_redis, lambda: self.fallback.claim(subject, window, want_requests, want_tokens, rpm, tpm))

    async def publish(self, process_id, running, stale_after, window):
        async def in_redis():
            if not running:
                return {}
            subjects = list(running)
            keys = [f"{REDIS_PREFIX}running:{s}" for s in subjects]
            args = [process_id, repr(time.time()), stale_after] + [running[s] for s in subjects]
            return dict(zip(subjects, (int(n) for n in await self.publish_script(keys=keys, args=args))))

        return await self._either(in_redis, lambda: self.fallback.publish(process_id, running, stale_after, window))

    async def close(self):
        await self.client.aclose()
