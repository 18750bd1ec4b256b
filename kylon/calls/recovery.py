"""A call's lines in the journal's open-call files (kylon/journal.py), and the
`interrupted` record of a call a killed process left open.

`open_entry` is written when the call is admitted, `progress_of` once a second
while it runs, `answer_entry` before a stream's last events go out (an SDK
stops reading at them: a crash before the transfer ends must not make a
complete call interrupted); at the next start `recovered_records` turns every
call opened but not closed into its record, billed from its last progress.
"""

import dataclasses
import datetime
import math
import time
from types import SimpleNamespace

from ..billing import Usage
from ..meter import settle_usage, usage_so_far
from ..models import UsageStatus
from ..providers.base import Exchange
from .outcome import whole_answer_sent
from .record import CallState, build_record

RECOVERED_ERROR = "Kylon stopped before the call ended (recorded from its journal at the next start)"


# An open line is a JSON list, "open" and then these, in this order: a list
# of plain values is the cheapest line to encode (it is written for every call).
OPEN_FIELDS = ("request_id", "agent_id", "key_id", "provider", "route", "model", "price_model", "stream", "hold",
               "started_at", "request_bytes", "usage")


def open_entry(call):
    """Everything the call's record needs that is known at admission."""
    exchange = call.exchange
    entry = [
        "open", call.request_id, call.agent.agent_id, call.key.key_id, call.provider.name,
        call.route_name if exchange.route is not None else exchange.path[:200], exchange.model,
        exchange.price_model, exchange.stream, str(call.held), call.started_at.isoformat(), exchange.request_bytes,
    ]
    if exchange.usage is not None:
        # Known before the call goes upstream (a free route's zero).
        entry.append(usage_fields(usage_so_far(exchange)))
    return entry


def read_open_entry(entry):
    """An open line's list, as a dict of OPEN_FIELDS."""
    opened = dict(zip(OPEN_FIELDS, entry[1:]))
    opened["started_at"] = datetime.datetime.fromisoformat(opened["started_at"])
    return opened


def progress_key(call):
    """Changes whenever the call's usage so far may have changed; None while
    nothing is known but what the open line says."""
    exchange = call.exchange
    usage = exchange.usage
    if usage is None:
        if not exchange.output_events and not call.upstream_status:
            return None
        return exchange.output_events, call.upstream_status
    return exchange.output_events, call.upstream_status, usage_fields(usage)


def progress_of(call):
    """(key, entry maker) for OpenCalls.checkpoint."""
    return progress_key(call), lambda: progress_entry(call, usage_so_far(call.exchange))


def answer_entry(call):
    """The progress line of a stream whose last events go out next, or None
    when they do not complete it (an error in the stream)."""
    exchange = call.exchange
    if not whole_answer_sent(call.upstream_status, True, exchange.usage_final, exchange.stream_done,
                             exchange.stream_error):
        return None
    # What finish_call bills a call whose client left after the whole answer.
    return progress_entry(call, settle_usage(exchange, finished=True), complete=True)


def progress_entry(call, usage, complete=False):
    entry = {
        "progress": call.request_id,
        "usage": usage_fields(usage),
        "http_status": call.upstream_status,
        "seconds": round(time.monotonic() - call.t0, 3),
    }
    if complete:
        entry["complete"] = True
    return entry


def usage_fields(usage):
    return {f.name: getattr(usage, f.name) for f in dataclasses.fields(usage)}


def recovered_records(found, finished, pricebook):
    """The `interrupted` records of the calls in `found` (OpenCalls.read)
    whose request id is not among `finished` (the journaled final records)."""
    records = []
    for request_id, (opened, progress) in found.items():
        if request_id not in finished:
            records.append(recovered_record(opened, progress, pricebook))
    return records


def recovered_record(opened, progress, pricebook):
    """Billed from the last progress line, else from the open entry (at
    least the input estimate), and flagged estimated; completed if that line
    says the whole answer was going out (see answer_entry)."""
    opened = read_open_entry(opened)
    request_id = opened["request_id"]
    exchange = Exchange(request_id=request_id, route=None, path=opened["route"], model=opened["model"],
                        price_model=opened["price_model"], stream=opened["stream"])
    exchange.request_bytes = opened["request_bytes"]
    progress = progress or {}
    fields = progress.get("usage") or opened.get("usage")  # (the open entry's: a free call)
    usage = Usage(**fields) if fields is not None else Usage(input_tokens=math.ceil(exchange.request_bytes / 4))
    status, error = UsageStatus.INTERRUPTED, RECOVERED_ERROR
    if progress.get("complete"):
        status, error = UsageStatus.COMPLETED, ""
    else:
        usage.estimated = True
    call = CallState(request_id, SimpleNamespace(name=opened["provider"]), SimpleNamespace(key_id=opened["key_id"]),
                     SimpleNamespace(agent_id=opened["agent_id"]), exchange, opened["started_at"], 0.0, None)
    http_status = progress.get("http_status") or 503
    record, _ = build_record(call, status, http_status, usage, pricebook, progress.get("seconds", 0.0), error)
    return record
