"""Whether a proxied call may go upstream.

The checks, in the order a client meets them: the body's framing (400, before
the key), the Kylon key (401, or 429 while an address keeps sending bad ones),
the path and method (400/404/405), the provider's configuration (503), the
gate (403), credits (402: the agent's balance, then the key's credit limit),
the declared body size (413); once the body is read, its JSON (400) and the
hold (402, the same two). Each returns a Refusal, or None when the call may
go on. A 402 names what ran out, its figures and when it resets, with a
machine-readable code (ERROR_CODES).
"""

import decimal
import fnmatch
import functools
import json
import re
import urllib.parse
from typing import NamedTuple

from ..auth import KEY_PREFIX
from ..billing import credits_for
from ..credits import ZERO
from ..gates import missing_skill_message


class Refusal(NamedTuple):
    status: int
    message: str
    # The label of kylon_rejected_requests_total.
    reason: str = "bad_request"
    # Not a field: headers of the answer besides the usual ones, which a
    # subclass sets (ratelimits.RateRefusal: Retry-After, x-ratelimit-*).
    headers = None

    @property
    def code(self):
        """The error body's code where the status's usual one would mislead, else None."""
        return ERROR_CODES.get((self.status, self.reason))


# The error body's `code` of a refusal, by its status and reason (else the status's own, errors.py).
ERROR_CODES = {
    (402, "credits"): "insufficient_credits", (402, "key_limit"): "key_limit_reached",
    (403, "model"): "model_not_allowed", (404, "model"): "model_not_found",
}
PERIODS = {"daily": "a day", "weekly": "a week", "monthly": "a month", "none": "in all"}


def amount(value):
    return f"{value.normalize():f}"


def iso(moment):
    return moment.isoformat(timespec="seconds") + "Z"


def balance_refusal(balance, estimate=None):
    """The 402 for an agent whose balance (less every hold) cannot cover a
    call: `estimate` is what this call would hold (None before its body is read)."""
    figures = (f"the agent has {amount(max(balance.available, ZERO))} available (its balance "
               f"{amount(balance.balance)} less {amount(balance.held + balance.held_elsewhere)} held by its "
               "running calls)")
    if estimate is None:
        message = f"Out of credits (agent balance): {figures}."
    else:
        message = f"Agent balance too low: this call may cost up to {amount(estimate)} credits; {figures}."
    return Refusal(402, message + " The balance does not reset: the operator adds credits.", "credits")


def key_limit_refusal(key_balance, estimate=None):
    """The 402 for a key whose credit limit this period (less every hold on
    it) cannot cover a call; the agent's other keys go on."""
    b = key_balance
    figures = (f"the key has {amount(max(b.available, ZERO))} left of its limit of {amount(b.limit)} credits "
               f"{PERIODS.get(b.reset, '')} (spent {amount(b.spent_this_period)} this period, "
               f"{amount(b.held_total)} held by its running calls)")
    head = "Key credit limit reached: "
    if estimate is not None:
        head += f"this call may cost up to {amount(estimate)} credits; "
    resets = f"It resets at {iso(b.resets_at)}." if b.resets_at is not None else "It does not reset."
    return Refusal(402, f"{head}{figures}. {resets}", "key_limit")


def check_credits(balance, key_balance=None):
    """Before the body is read: the agent has credits left, and the key
    (a KeyBalance when it has a credit limit) some of its limit."""
    if balance.available <= 0:
        return balance_refusal(balance)
    if key_balance is not None and key_balance.available <= 0:
        return key_limit_refusal(key_balance)
    return None

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


def check_call(provider, route, allowed, path, method, skills, balance, gates, key_balance=None):
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
    return check_credits(balance, key_balance)


def check_hold(usage, price, balance, key_balance=None):
    """(the credits a call holds, None) or (None, Refusal): the most the call
    may use (Provider.hold_usage) at its price, against what the agent has
    available (its balance less what running calls hold, here and in other
    processes), and what its key has left of a credit limit (the same way).
    So calls running together never hold more than the balance, nor more
    than a key's limit (README, "Holds")."""
    try:
        hold = credits_for(usage, price)
    except decimal.InvalidOperation:
        # Beyond 28 digits (limits at their maximum, priced absurdly): no balance covers it.
        return None, Refusal(402, "Agent balance too low: this call may cost more than any balance can cover.", "credits")
    if hold > balance.available:
        return None, balance_refusal(balance, hold)
    if key_balance is not None and hold > key_balance.available:
        return None, key_limit_refusal(key_balance, hold)
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


# -- allowed models (docs/controls.md) -------------------------------------------

# Shown at most in a refusal's message.
SHOWN_PATTERNS = 20


@functools.lru_cache(maxsize=4096)
def model_matcher(provider_name, patterns):
    """A test of a model name against allowed-model patterns (a tuple, as
    Limits.models holds them) on one provider, compiled once per list and
    provider. fnmatch wildcards (`*`, `?`, `[…]`); a pattern prefixed with this
    provider's name (`openrouter:moonshotai/*`) matches the rest against the
    model, and every pattern also matches the model name as it is: so a pattern
    with another provider's prefix matches none of this provider's models, and
    a name with a colon of its own (`ft:gpt-4o-mini:org::id`) still matches."""
    prefix = provider_name + ":"
    parts = []
    for pattern in patterns:
        parts.append(fnmatch.translate(pattern))
        if pattern.startswith(prefix):
            parts.append(fnmatch.translate(pattern[len(prefix):]))
    return re.compile("|".join(parts)).match


def check_model(provider_name, model, key, agent):
    """The 403 for a call of `model` that the agent's or the key's allowed
    models exclude, else None (a call must pass both lists; an empty one allows
    any model). `model` is the name the provider gives it (the body's `model`,
    or the model in the path for Gemini) and "" when Kylon could not tell it:
    refused whenever a list applies. `key` and `agent` are the call's KeyEntry
    and AgentEntry (anything with `.limits.models`). Shared by every route that
    calls a model, WebSocket ones included."""
    for who, patterns in (("agent", agent.limits.models), ("key", key.limits.models)):
        if patterns and not (model and model_matcher(provider_name, patterns)(model)):
            return Refusal(403, model_refusal_message(provider_name, model, who, patterns), "model")
    return None


def model_refusal_message(provider_name, model, who, patterns):
    shown = ", ".join(patterns[:SHOWN_PATTERNS]) + (", …" if len(patterns) > SHOWN_PATTERNS else "")
    if not model:
        return (f"Kylon could not tell which model this call is for (the request names none it could read), "
                f"and this {who} may only call: {shown}.")
    return f"The model '{model}' is not allowed for this {who} on {provider_name}; its allowed models are: {shown}."


def model_filter(provider_name, key, agent):
    """A test `model name -> bool` of what the key and its agent may call on
    a provider (to filter a model listing), or None when any model is allowed."""
    matchers = [model_matcher(provider_name, p) for p in (agent.limits.models, key.limits.models) if p]
    if not matchers:
        return None
    return lambda model: all(matches(model) for matches in matchers)
