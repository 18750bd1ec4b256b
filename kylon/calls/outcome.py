"""What became of a call that went upstream: its record's status, the usage
to bill, the metric to count and what the client still gets.

`classify` is the only place these rules live; the handler gathers the facts
(how the transfer ended, the status, whether the client left or Kylon is
shutting down) and carries out the answer.
"""

from typing import NamedTuple

from .. import relay
from ..models import UsageStatus

# How the usage is settled (meter.settle_usage): the provider's final figures,
# whatever was learnt of a cut answer (estimated), or nothing at all.
FINAL, PARTIAL, NOTHING = "final", "partial", "nothing"

UPSTREAM_FAILURES = {
    relay.TIMEOUT: (504, "The upstream did not answer in time."),
    relay.UNREACHABLE: (502, "The upstream could not be reached."),
}
BROKEN_UPSTREAM = (502, "The upstream connection failed.")


class Facts(NamedTuple):
    transfer: str  # relay.COMPLETED, CANCELLED, TIMEOUT, UNREACHABLE or BROKEN
    status: int  # the upstream's HTTP status, 0 before its headers
    client_gone: bool
    interrupted: bool  # cut by a shutdown
    headers_sent: bool  # the answer's status line has gone to the client
    whole_answer_sent: bool  # see whole_answer_sent()
    stream_error: str = ""  # an error inside a 2xx answer
    transfer_error: str = ""  # libcurl's message for a failed transfer
    # Why a 2xx answer that Kylon must reshape (Gemini's helpers) cannot be.
    bad_answer: str = ""


class Outcome(NamedTuple):
    status: UsageStatus
    http_status: int
    usage: str  # FINAL, PARTIAL or NOTHING
    error: str = ""
    # kylon_upstream_errors_total's kind, or "disconnect" for kylon_client_disconnects_total.
    metric: str = ""
    # What the client still gets: None (nothing: it is gone), "end" (the end
    # of what was relayed), "complete" (its last bytes too), or (status,
    # message) for an error of Kylon's while nothing was sent yet.
    answer: object = None


def whole_answer_sent(status, scanned_stream, usage_final, stream_done, stream_error):
    """A 2xx event stream whose final usage (each provider's last or next to
    last event) or end marker has gone to the client, with no error in it."""
    return 200 <= status < 300 and scanned_stream and (usage_final or stream_done) and not stream_error


def classify(facts):
    status = facts.status
    ok = 200 <= status < 300
    if facts.interrupted and not facts.client_gone:
        answer = "end" if facts.headers_sent else (503, "Kylon is shutting down.")
        settled = FINAL if facts.transfer == relay.COMPLETED else PARTIAL
        return Outcome(UsageStatus.INTERRUPTED, status or 503, settled, "shutdown", answer=answer)
    if facts.client_gone or facts.transfer == relay.CANCELLED:
        if facts.whole_answer_sent:
            # It closed after the last events, before the upstream's closing
            # bytes reached Kylon (an SDK stops reading at [DONE] / message_stop).
            return Outcome(UsageStatus.COMPLETED, status, FINAL)
        if facts.stream_error and ok:
            # An SDK raises at an error chunk and leaves: an upstream error.
            return in_stream_error(facts, answer=None)
        settled = FINAL if facts.transfer == relay.COMPLETED else PARTIAL
        return Outcome(UsageStatus.DISCONNECTED, status or 499, settled, metric="disconnect")
    if facts.transfer == relay.COMPLETED:
        if status >= 400:
            kind = "http_4xx" if status < 500 else "http_5xx"
            return Outcome(UsageStatus.UPSTREAM_ERROR, status, NOTHING, f"upstream answered {status}", kind, "complete")
        if facts.stream_error:
            return in_stream_error(facts, answer="complete")
        if facts.bad_answer:
            return Outcome(UsageStatus.ERROR, 502, FINAL, facts.bad_answer, answer=(502, facts.bad_answer))
        return Outcome(UsageStatus.COMPLETED, status, FINAL, answer="complete")
    error = facts.transfer_error or facts.transfer
    if facts.headers_sent:
        # Mid-answer failure: the status line is gone; the body is ended so
        # the client sees a truncated answer rather than a hang.
        return Outcome(UsageStatus.ERROR, status, PARTIAL, error, facts.transfer, "end")
    code, message = UPSTREAM_FAILURES.get(facts.transfer, BROKEN_UPSTREAM)
    return Outcome(UsageStatus.ERROR, code, PARTIAL, error, facts.transfer, (code, message))


def in_stream_error(facts, answer):
    """The answer began well and then carried an error: what was consumed is
    billed, the call counts as an upstream error."""
    return Outcome(UsageStatus.UPSTREAM_ERROR, facts.status, FINAL, facts.stream_error, "in_stream", answer)
