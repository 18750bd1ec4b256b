"""The operator's controls on agents and keys, as the admin API and pages
take them and as the proxy path reads them (docs/controls.md).

On an agent and on each key (None = no limit): `rpm_limit` (requests a
minute), `tpm_limit` (input + output tokens a minute), `concurrency_limit`
(calls at once), `allowed_models` (patterns; empty = any model). On a key
only: `credit_limit` (credits it may spend a period) and `limit_reset`
(the period: none, daily, weekly or monthly, calendar periods in UTC). On an
agent only: `alert_thresholds` (low-balance alerts: "20%" of the last grant,
or an absolute amount).
"""

import re
from dataclasses import dataclass
from decimal import Decimal

from .models import LIMIT_RESETS, NANO_QUANTUM

RATE_FIELDS = ("rpm_limit", "tpm_limit", "concurrency_limit")
AGENT_FIELDS = RATE_FIELDS + ("allowed_models", "alert_thresholds")
KEY_FIELDS = RATE_FIELDS + ("allowed_models", "credit_limit", "limit_reset")
# Beyond any real rate, and within a signed 64-bit column.
MAX_RATE = 10**12
MAX_PATTERNS = 200
_PATTERN = re.compile(r"[A-Za-z0-9_.:/*?@+\-\[\]]{1,200}")
_THRESHOLD = re.compile(r"([0-9]+(\.[0-9]+)?)%?")


class ControlError(ValueError):
    """A control given in a form Kylon does not take (the admin answers 400)."""


@dataclass(frozen=True)
class Limits:
    """The limits of one agent or key, as the proxy path reads them."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    models: tuple = ()  # allowed model patterns; () = any model


NO_LIMITS = Limits()


def limits_of(row):
    """Limits from an Agent or ApiKey row."""
    return Limits(row.rpm_limit, row.tpm_limit, row.concurrency_limit, split_patterns(row.allowed_models))


def split_patterns(text):
    return tuple(p for p in (text or "").split("\n") if p)


def _rate(name, value):
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RATE:
        raise ControlError(f"'{name}' must be a whole number from 1 to {MAX_RATE}, or null for no limit.")
    return value


def _patterns(value):
    if value is None:
        return ""
    if isinstance(value, str):
        value = re.split(r"[\s,]+", value)
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ControlError("'allowed_models' must be a list of model patterns (or one string of them).")
    patterns = sorted({p.strip() for p in value if p.strip()})
    if len(patterns) > MAX_PATTERNS:
        raise ControlError(f"'allowed_models' takes at most {MAX_PATTERNS} patterns.")
    for p in patterns:
        if not _PATTERN.fullmatch(p):
            raise ControlError(f"Not a model pattern: {p[:60]!r} (letters, digits, - _ . : / @ + and the "
                               "wildcards * ? [ ]).")
    return "\n".join(patterns)


def _thresholds(value):
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [str(value)]
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,]+", value) if v]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ControlError("'alert_thresholds' must be a list like [\"20%\", \"5%\", \"0\"].")
    out = []
    for v in value:
        v = str(v).strip()
        if not _THRESHOLD.fullmatch(v) or (v.endswith("%") and Decimal(v[:-1]) > 100):
            raise ControlError(f"Not an alert threshold: {v[:40]!r} (a percentage of the last grant such as "
                               "'20%', or an amount of credits such as '5').")
        out.append(v)
    return ",".join(dict.fromkeys(out))


def parse_thresholds(text):
    """[(is_percent, Decimal)] from the stored form."""
    return [(t.endswith("%"), Decimal(t.rstrip("%"))) for t in (text or "").split(",") if t]


def parse(body, fields, parse_amount):
    """The column values for those of `fields` present in `body` (an admin
    request's JSON); `parse_amount` is admin.parse_amount."""
    values = {}
    for name in fields:
        if name not in body:
            continue
        value = body[name]
        if name in RATE_FIELDS:
            values[name] = _rate(name, value)
        elif name == "allowed_models":
            values[name] = _patterns(value)
        elif name == "alert_thresholds":
            values[name] = _thresholds(value)
        elif name == "credit_limit":
            if value is None or value == "":
                values[name] = None
            else:
                amount = parse_amount(value, name)
                if amount < 0:
                    raise ControlError("'credit_limit' must not be negative.")
                values[name] = amount
        elif name == "limit_reset":
            value = value or "none"
            if value not in LIMIT_RESETS:
                raise ControlError(f"'limit_reset' must be one of {', '.join(LIMIT_RESETS)}.")
            values[name] = value
    return values


def shown(row, fields):
    """The controls of a row as the admin API shows them."""
    out = {}
    for name in fields:
        value = getattr(row, name)
        if name == "allowed_models":
            value = list(split_patterns(value))
        elif name == "alert_thresholds":
            value = [t for t in (value or "").split(",") if t]
        elif name == "credit_limit" and value is not None:
            value = str(Decimal(value).quantize(NANO_QUANTUM))
        out[name] = value
    return out
