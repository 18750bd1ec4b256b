"""A call's lines in the journal's open-call files (kylon/journal.py), and the
`interrupted` record of a call a killed process left open.

`open_entry` is written when the call is admitted, `progress_of` once a second
while it runs; at the next start `recovered_records` turns every call opened
but not closed into its record, billed from its last progress (estimated).
"""

import dataclasses
import datetime
import math
import time
from types import SimpleNamespace

from ..billing import Usage
from ..meter import usage_so_far
from ..models import UsageStatus
from ..providers.base import Exchange
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

    def entry():
        return {
            "progress": call.request_id,
            "usage": usage_fields(usage_so_far(call.exchange)),
            "http_status": call.upstream_status,
            "seconds": round(time.monotonic() - call.t0, 3),
        }

    return progress_key(call), entry


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
    least the input estimate), and flagged estimated."""
    opened = read_open_entry(opened)
    request_id = opened["request_id"]
    exchange = Exchange(request_id=request_id, route=None, path=opened["route"], model=opened["model"],
                        price_model=opened["price_model"], stream=opened["stream"])
    exchange.request_bytes = opened["request_bytes"]
    fields = (progress or opened).get("usage")  # (the open entry's: a free call)
    if fields is not None:
        usage = Usage(**fields)
    else:
        usage = Usage(input_tokens=math.ceil(exchange.request_bytes / 4))
    usage.estimated = True
    call = CallState(request_id, SimpleNamespace(name=opened["provider"]), SimpleNamespace(key_id=opened["key_id"]),
                     SimpleNamespace(agent_id=opened["agent_id"]), exchange, opened["started_at"], 0.0, None)
    seconds = progress["seconds"] if progress else 0.0
    http_status = (progress["http_status"] if progress else 0) or 503
    record, _ = build_record(call, UsageStatus.INTERRUPTED, http_status, usage, pricebook, seconds, RECOVERED_ERROR)
    return record
