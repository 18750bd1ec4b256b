"""Whether a proxied call may go upstream.

The checks, in the order a client meets them: the body's framing (400, before
the key), the Kylon key (401, or 429 while an address keeps sending bad ones),
the path and method (400/404/405), the provider's configuration (503), the
gate (403), credits (402), the declared body size (413); once the body is
read, its JSON (400) and the hold (402). Each returns a Refusal, or None when
the call may go on.
"""

import decimal
import json
import re
import urllib.parse
from typing import NamedTuple

from ..auth import KEY_PREFIX
from ..billing import credits_for
from ..gates import missing_skill_message


class Refusal(NamedTuple):
    status: int
    message: str
    # The label of kylon_rejected_requests_total.
    reason: str = "bad_request"


OUT_OF_CREDITS = "Out of credits: this agent's balance, less what its running calls hold, is not positive."

KEY_REFUSALS = {
    "revoked": "This Kylon API key has been revoked.",
    "expired": "This Kylon API key has expired.",
    # A URL Kylon signed for a key (ElevenLabs' conversations) that no longer holds.
    "signed_url": "This signed URL is invalid or has expired: ask Kylon for a new one.",
}


BAD_KEYS_THROTTLED = "Too many bad Kylon API keys from your address: wait and try again."


def check_framing(content_length, transfer_encoding):
    """The body's framing headers (strings or None), checked before the key so
    that a request the HTTP layer will refuse leaves no usage record: one
    Content-Length of digits (Tornado joins repeated ones with commas), or
    Transfer-Encoding: chunked alone."""
    if transfer_encoding is not None:
        if content_length is not None or transfer_encoding.lower() != "chunked":
            return Refusal(400, "Conflicting or unsupported body framing (Content-Length, Transfer-Encoding).",
                           "framing")
    elif content_length is not None and not (content_length.isascii() and content_length.isdigit()):
        return Refusal(400, "Invalid Content-Length header.", "framing")
    return None


def key_refusal(reason, presented, messages=None):
    """The 401 for a key lookup that failed for `reason`; `presented` says
    whether the client sent a key at all. A provider may name reasons of its
    own (Gemini's upload sessions)."""
    message = (messages or {}).get(reason) or KEY_REFUSALS.get(reason)
    if message is None:
        message = "Invalid Kylon API key." if presented else "Missing Kylon API key."
    return Refusal(401, message, "key")


# A path under /proxy/<provider> may only name the provider's own API: no dot
# segments, no encoded slashes, dots or backslashes, no empty segments (which
# could make "//host" an authority). Checked on the raw path; the upstream URL
# is always base URL + this path, so nothing else can pick the host.
_UNSAFE_PATH = re.compile(r"(^|/)\.\.?(/|$)|%2e|%2f|%5c|\\|//|%00|%0d|%0a", re.IGNORECASE)


def safe_path(path):
    return not _UNSAFE_PATH.search(path)


def without_kylon_keys(query):
    """The query string less any parameter carrying a Kylon key (`?key=pak_…`,
    or one under any other name): a Kylon key never goes upstream."""
    if KEY_PREFIX not in urllib.parse.unquote(query):
        return query
    kept = [part for part in query.split("&") if KEY_PREFIX not in urllib.parse.unquote_plus(part)]
    return "&".join(kept)


def check_call(provider, route, allowed, path, method, skills, available, gates):
    """An authenticated call, before its body is read."""
    if not safe_path(path):
        return Refusal(400, "Invalid path: it must stay within the provider's API.", "path")
    if route is None and not allowed:
        return Refusal(404, f"No such {provider.name} route: {path or '/'}.")
    if not allowed:
        return Refusal(405, f"Method {method} is not allowed on {path}.")
    if not provider.configured:
        return Refusal(503, provider.missing_configuration(), "not_configured")
    skill = gates.required_skill(provider.name, path)
    if skill and skill not in skills:
        return Refusal(403, missing_skill_message(skill, provider.name), "gate")
    if available <= 0:
        return Refusal(402, OUT_OF_CREDITS, "credits")
    return None


def check_hold(usage, price, available):
    """(the credits a call holds, None) or (None, Refusal): the most the call
    may use (Provider.hold_usage) at its price, against what the agent has
    available (its balance less what running calls hold, here and in other
    processes). So calls running together never hold more than the balance
    (README, "Holds")."""
    try:
        hold = credits_for(usage, price)
    except decimal.InvalidOperation:
        # Beyond 28 digits (limits at their maximum, priced absurdly): no balance covers it.
        return None, Refusal(402, "This call may cost more than any balance can cover.", "credits")
    if hold > available:
        return None, Refusal(402, f"This call may cost up to {hold.normalize():f} credits; "
                                  f"the agent has {max(available, 0).normalize():f} available "
                                  "(its balance less what its running calls hold).", "credits")
    return hold, None


def check_declared_size(content_length, limit):
    """The Content-Length header (a string or None) against the body limit."""
    if content_length is None:
        return None
    try:
        too_large = int(content_length) > limit
    except ValueError:
        return Refusal(400, "Invalid Content-Length header.")
    if too_large:
        return Refusal(413, f"Request body larger than {limit} bytes.", "too_large")
    return None


def read_json_body(provider, body):
    """(the request's JSON object, None), or (None, Refusal)."""
    try:
        request_json = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        return None, Refusal(400, f"The request body is not valid JSON: {str(e)[:200]}")
    if not isinstance(request_json, dict):
        return None, Refusal(400, "The request body must be a JSON object.")
    problem = provider.body_problem(request_json)
    if problem:
        return None, Refusal(400, problem)
    return request_json, None


def read_request(provider, exchange, body):
    """(the body to send, None) or (None, Refusal): the JSON read, its model
    and stream flag noted on the exchange, and the route's rewrite applied
    (which may refuse the request with a ValueError)."""
    request_json, refusal = read_json_body(provider, body)
    if refusal is not None:
        return None, refusal
    exchange.request_json = request_json
    exchange.model = request_json.get("model") or ""
    exchange.stream = request_json.get("stream") is True
    rewrite = exchange.route.rewrite
    try:
        if rewrite is not None and rewrite(exchange, request_json):
            body = json.dumps(request_json, ensure_ascii=False).encode("utf-8")
    except ValueError as e:
        return None, Refusal(400, str(e))
    return body, None
