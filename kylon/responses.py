"""Stored OpenAI responses: whose each one is, and the one charge of a
background response.

Binding. A response a call creates (`responses.create`, `store` not false, or
`background` true) is bound to the calling agent: kept in memory here (an LRU
cache in front of the `ResponseBinding` table) and written to the table in
batches on the database thread, off the request path. A call naming a
response (retrieve, stream resume, cancel, delete, input items, or a body's
`previous_response_id`) goes upstream only when the response is the calling
agent's; another agent's, or an id Kylon never saw created, is a 404 in
OpenAI's shape with nothing sent upstream. A cache miss is read on the
database thread.

Background responses. A background create answers `queued` with no usage:
its call records no credits (not an estimate), keeps its hold, and the
response stays pending until its final usage is charged, exactly once, by
whichever path first sees it in a terminal status: the agent's retrieve, a
resumed stream, a cancel, or Kylon's own poller, which GETs the response
upstream with the operator's key (backing off from `background_poll_seconds`
to a minute, giving up after `background_max_seconds`). The charge is one
database transaction: `UPDATE … SET billed = true WHERE billed = false`, and
only when that changed the row, the usage record (route
`responses.background`, its request id made from the response id) and the
agent's debit. Two paths, or two processes on one database, never both
charge; a restarted Kylon reads the pending rows and polls them again.
"""

import asyncio
import collections
import datetime
import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from tornado.httpclient import AsyncHTTPClient

from . import metrics
from .billing import Usage
from .calls.admission import Refusal
from .calls.record import CallState, build_record
from .digest import sha256_hex
from .models import ResponseBinding, UsageStatus, database, utcnow
from .providers import Exchange, Route
from .providers.base import json_or_none
from .providers.openai import responses_usage
from .usage import write_batch

log = logging.getLogger("kylon.responses")

# A response's statuses from which it changes no more.
TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
# The route label of a background response's own usage record.
BACKGROUND_ROUTE = Route(r"/v1/responses", "responses.background")
CACHE_MAX = 100_000
# Kylon's own polls: the longest wait between two, and how many run at once.
MAX_POLL_INTERVAL = 60.0
MAX_POLLS_AT_ONCE = 16
POLL_USER_AGENT = "kylon-background-poll"
# Bindings are kept this long (OpenAI stores a response for 30 days).
KEEP_DAYS = 31


@dataclass(slots=True)
class Binding:
    response_id: str
    agent_id: int
    key_id: int | None
    model: str
    background: bool
    billed: bool
    request_id: str
    created_at: object  # naive UTC datetime
    # The creating call's hold, kept until the charge (in this process only).
    held: Decimal = Decimal(0)
    polls: int = 0
    next_poll: float = 0.0  # time.monotonic()
    busy: bool = False  # a poll or the charge is under way

    @property
    def pending(self):
        return self.background and not self.billed

    def row(self):
        return {"response_id": self.response_id, "agent_id": self.agent_id, "key_id": self.key_id,
                "provider": "openai", "model": self.model[:200], "background": self.background,
                "billed": self.billed, "request_id": self.request_id, "created_at": self.created_at}


def _from_row(row):
    return Binding(row.response_id, row.agent_id, row.key_id, row.model, row.background, row.billed,
                   row.request_id, row.created_at)


# -- on the database thread ------------------------------------------------------


def _load(response_id):
    return ResponseBinding.get_or_none(ResponseBinding.response_id == response_id)


def _load_pending():
    """The unbilled background responses; and bindings past OpenAI's storage, removed."""
    old = utcnow() - datetime.timedelta(days=KEEP_DAYS)
    ResponseBinding.delete().where((ResponseBinding.created_at < old) & (ResponseBinding.billed == True)).execute()  # noqa: E712
    query = ResponseBinding.select().where((ResponseBinding.billed == False) & (ResponseBinding.background == True))  # noqa: E712
    return list(query)


def _insert(rows):
    with database.atomic():
        for start in range(0, len(rows), 100):
            ResponseBinding.insert_many(rows[start : start + 100]).on_conflict_ignore().execute()


def claim_and_write(row, record):
    """The one charge of a background response: True when this call made it.
    The row is written first if its batch has not been yet."""
    with database.atomic():
        ResponseBinding.insert(**row).on_conflict_ignore().execute()
        claimed = (
            ResponseBinding.update(billed=True, billed_at=utcnow())
            .where((ResponseBinding.response_id == row["response_id"]) & (ResponseBinding.billed == False))  # noqa: E712
            .execute()
        )
        if claimed:
            write_batch([record])
    return bool(claimed)


class _Ref:
    """The key and agent of a background record (build_record reads their ids)."""

    __slots__ = ("key_id", "agent_id")

    def __init__(self, key_id, agent_id):
        self.key_id, self.agent_id = key_id, agent_id


def background_request_id(response_id):
    """The request id of a response's background record: the same in every
    process, so even a replayed or repeated write is skipped by the unique key."""
    return "bgr_" + sha256_hex(response_id)[:36]


class ResponseBindings:
    def __init__(self, db, balances, pricebook, provider, settings, open_calls=()):
        self.db = db
        # The proxy calls in progress: a stream creating a response is bound
        # only at its end, and its agent may name the response before that.
        self.open_calls = open_calls
        self.balances = balances
        self.pricebook = pricebook
        self.provider = provider  # the OpenAI provider (its base URL and operator key)
        self.poll_seconds = settings.background_poll_seconds
        self.max_seconds = settings.background_max_seconds
        self.flush_seconds = settings.usage_flush_seconds
        self.cache = collections.OrderedDict()  # response id -> Binding, least recently used first
        self.pending = {}  # response id -> Binding: background, not billed yet
        self.unwritten = []  # binding rows for the next batch
        self._tasks = []
        self._charges = set()  # charge tasks under way (kept from the GC)

    # -- the proxy path ------------------------------------------------------
    def _remember(self, binding):
        cache = self.cache
        known = cache.get(binding.response_id)
        if known is not None:
            cache.move_to_end(binding.response_id)
            return known
        cache[binding.response_id] = binding
        if len(cache) > CACHE_MAX:
            cache.popitem(last=False)
        return binding

    async def lookup(self, response_id):
        """The response's Binding, or None when Kylon never saw it created."""
        binding = self.cache.get(response_id)
        if binding is not None:
            self.cache.move_to_end(response_id)
            return binding
        if len(response_id) > 200:
            return None
        row = await self.db.run(_load, response_id)
        if row is None:
            return None
        binding = self._remember(self.pending.get(response_id) or _from_row(row))
        if binding.pending:
            # Another process's, or one this process has not read yet: whoever sees it end bills it.
            self.pending[response_id] = binding
        return binding

    async def admit(self, call):
        """None when the response the call names (if any) is the calling agent's;
        else the Refusal. Deleting a background response not billed yet first
        reads it once: finished, it is billed; still running, the delete is
        refused (it must not take the final usage with it)."""
        exchange = call.exchange
        route = exchange.route
        if route.lifecycle in ("use", "delete"):
            exchange.named_object = route.pattern.match(exchange.path).group(1)
        response_id = exchange.named_object
        if not response_id:
            return None
        try:
            binding = await self.lookup(response_id)
        except Exception as e:
            log.warning("response binding lookup failed: %s", e)
            return Refusal(503, "Kylon cannot check this response right now (database unavailable).", "database")
        if binding is None:
            binding = self.being_created(response_id)
        if binding is None or binding.agent_id != call.agent.agent_id:
            return Refusal(404, f"Response with id '{response_id[:200]}' not found.", "not_found")
        if route.lifecycle in ("use", "delete"):
            exchange.model = binding.model
            exchange.stream = "stream=true" in exchange.query
        if route.lifecycle == "delete" and binding.pending:
            while binding.busy:  # a poll or the charge under way: its outcome first
                await asyncio.sleep(0.01)
            await self.poll(binding)
            if binding.pending:
                return Refusal(400, "This background response is still running: cancel it (responses.cancel) "
                                    "or wait until it finishes before deleting it.", "pending")
        return None

    def being_created(self, response_id):
        """The Binding a stream still under way will make for the response, or None."""
        for handler in self.open_calls:
            call = handler.call
            exchange = call.exchange if call is not None else None
            if exchange is not None and exchange.object_id == response_id and exchange.route.lifecycle == "create":
                return Binding(response_id, call.agent.agent_id, call.key.key_id, exchange.model, False, True,
                               call.request_id, call.started_at)
        return None

    def settle(self, call, usage):
        """At the call's record: bind the response it created; charge a pending
        background response whose end it showed. Returns the usage the call
        itself is billed."""
        exchange = call.exchange
        if not 200 <= call.upstream_status < 300:
            return usage
        lifecycle = exchange.route.lifecycle
        if lifecycle == "create":
            if not exchange.object_id or not (exchange.stored or exchange.background):
                return usage
            pending = exchange.background and exchange.object_status not in TERMINAL
            binding = Binding(exchange.object_id, call.agent.agent_id, call.key.key_id, exchange.model,
                              exchange.background, not pending, call.request_id, call.started_at)
            if pending:
                # Billed once it ends, from its final usage: nothing now, not a guess.
                binding.held, call.held = call.held, 0
                binding.next_poll = time.monotonic() + self.poll_seconds
                self.pending[binding.response_id] = binding
                metrics.BACKGROUND_PENDING.set(len(self.pending))
                usage = Usage()
            self._remember(binding)
            self.unwritten.append(binding.row())
        elif lifecycle == "use" and exchange.object_status in TERMINAL:
            binding = self.pending.get(exchange.named_object)
            if binding is not None and exchange.object_id == binding.response_id:
                task = asyncio.ensure_future(self.charge(binding, exchange.object_status, exchange.object_usage))
                self._charges.add(task)
                task.add_done_callback(self._charges.discard)
        return usage

    # -- the one charge ----------------------------------------------------------
    def background_record(self, binding, status, usage, error):
        request_id = background_request_id(binding.response_id)
        exchange = Exchange(request_id=request_id, route=BACKGROUND_ROUTE, path="/v1/responses",
                            model=binding.model)
        now = time.monotonic()
        age = max((utcnow() - binding.created_at).total_seconds(), 0)
        call = CallState(request_id, self.provider, _Ref(binding.key_id, binding.agent_id),
                         _Ref(binding.key_id, binding.agent_id), exchange, binding.created_at, now - age, None)
        if status == "failed":
            record_status, error = UsageStatus.UPSTREAM_ERROR, error or "response failed"
        elif status in TERMINAL:
            record_status, error = UsageStatus.COMPLETED, error or ("" if status == "completed" else f"response {status}")
        else:
            record_status = UsageStatus.ERROR
        return build_record(call, record_status, 200, usage or Usage(), self.pricebook, now, error,
                            binding.response_id[:100])

    async def charge(self, binding, status, usage, error=""):
        """Settle a pending response: its record and debit, unless another
        path or process did first. A database failure leaves it pending (the
        poller reads it again)."""
        if binding.billed or binding.busy:
            return
        binding.busy = True
        try:
            record, observations = self.background_record(binding, status, usage, error)
            claimed = await self.db.run(claim_and_write, binding.row(), record)
        except Exception as e:
            log.warning("charging background response %s failed, will retry: %s", binding.response_id, e)
            return
        finally:
            binding.busy = False
        binding.billed = True
        self.pending.pop(binding.response_id, None)
        metrics.BACKGROUND_PENDING.set(len(self.pending))
        if binding.held:
            self.balances.of(binding.agent_id).release(binding.held)
            binding.held = Decimal(0)
        if claimed:
            metrics.observe(observations)

    # -- Kylon's own polls -------------------------------------------------------
    async def poll(self, binding):
        """GET the response upstream (the operator's key) and charge it if it has
        ended; else the next poll is set, later each time."""
        if binding.busy or not binding.pending or not self.provider.configured:
            return
        binding.busy = True
        outcome = "error"
        try:
            url = f"{self.provider.base_url}{self.provider.upstream_prefix}/v1/responses/{binding.response_id}"
            answer = await AsyncHTTPClient().fetch(url, headers=self.poll_headers(), raise_error=False,
                                                   connect_timeout=10, request_timeout=60)
            body = json_or_none(answer.body or b"") if answer.code == 200 else None
            status = body.get("status") if body is not None else None
            if status in TERMINAL:
                outcome = "ended"
            elif answer.code == 404:
                outcome = "gone"
            elif status is not None:
                outcome = "running"
        except Exception as e:
            log.warning("polling background response %s failed: %s", binding.response_id, e)
        finally:
            binding.busy = False
        metrics.child(metrics.BACKGROUND_POLLS, outcome).inc()
        binding.polls += 1
        if outcome == "ended":
            await self.charge(binding, status, responses_usage(body))
        elif outcome == "gone":
            await self.charge(binding, "", None, "the response was gone upstream before Kylon read its usage")
        elif (utcnow() - binding.created_at).total_seconds() > self.max_seconds:
            await self.charge(binding, "", None, f"gave up after {binding.polls} polls: still not finished")
        else:
            interval = min(self.poll_seconds * 2 ** min(binding.polls, 20), MAX_POLL_INTERVAL)
            binding.next_poll = time.monotonic() + interval

    def poll_headers(self):
        return {**self.provider.auth_headers(), "User-Agent": POLL_USER_AGENT}

    async def load_pending(self):
        """The pending background responses in the table (a restart's, or
        another process's that stopped): polled from now on."""
        for row in await self.db.run(_load_pending):
            if row.response_id not in self.pending:
                binding = self._remember(_from_row(row))
                if binding.pending:
                    self.pending[row.response_id] = binding
        metrics.BACKGROUND_PENDING.set(len(self.pending))

    async def _sweep(self):
        """Due polls, a few at a time; now and then the table's pending rows again."""
        reload_every = max(15 * self.poll_seconds, 1.0)
        reloaded = time.monotonic()
        while True:
            await asyncio.sleep(min(self.poll_seconds, 1.0))
            try:
                now = time.monotonic()
                if now - reloaded > reload_every:
                    reloaded = now
                    await self.load_pending()
                due = [b for b in self.pending.values() if b.next_poll <= now and not b.busy]
                for start in range(0, len(due), MAX_POLLS_AT_ONCE):
                    await asyncio.gather(*(self.poll(b) for b in due[start : start + MAX_POLLS_AT_ONCE]))
            except Exception:
                log.exception("background response sweep failed")

    async def flush(self):
        if not self.unwritten:
            return
        rows, self.unwritten = self.unwritten, []
        try:
            await self.db.run(_insert, rows)
        except Exception:
            self.unwritten[:0] = rows
            raise

    async def _flushes(self):
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Exception as e:
                log.warning("writing response bindings failed, will retry: %s", e)

    def start(self):
        self._tasks = [asyncio.ensure_future(self._sweep()), asyncio.ensure_future(self._flushes())]

    async def close(self):
        for task in self._tasks:
            task.cancel()
        for _ in range(3):
            try:
                await self.flush()
                return
            except Exception:
                await asyncio.sleep(0.5)
