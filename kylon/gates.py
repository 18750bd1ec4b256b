"""Gates: which skill a provider, or a route of it, requires (docs/gates.md).

A gate is a row of the database: (provider, route, skill). `route` is a path
prefix under /proxy/<provider>, matched by whole segments ("" is the whole
provider); a `*` in it stands for any text within one segment, so
`/*/models/*:predict` names the `:predict` call of every model of every API
version. The longest matching route wins.

The ways around Kylon's meter are closed the same way, by gates that
providers ship (`default_gates`) with a reserved skill no agent has unless
the operator grants it: `operator:credentials` on paths that mint a
credential or a signed URL for the operator's account, `operator:unmetered`
on routes Kylon cannot bill. `seed_gates` writes each shipped gate into a
database once.
"""

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import unquote

from .models import Gate, Setting, database

CREDENTIALS = "operator:credentials"
UNMETERED = "operator:unmetered"

# Why a reserved skill's gate refuses, in the 403's message.
RESERVED_REASONS = {
    CREDENTIALS: "This {provider} path mints a credential (a token, secret or signed URL for the operator's "
                 "account) that would bypass Kylon's metering.",
    UNMETERED: "This {provider} route is not metered by Kylon: it cannot bill what the provider charges for it.",
}


def missing_skill_message(skill, provider):
    reason = RESERVED_REASONS.get(skill)
    if reason is None:
        return f"This agent lacks the skill '{skill}', which {provider} requires."
    return (reason.format(provider=provider) + f" The operator can open it by granting this agent the skill "
            f"'{skill}' (or by removing the gate).")


def route_matcher(route):
    """A test of a path against a gate's route."""
    if route == "":
        return lambda path: True
    if "*" not in route:
        stem = route.rstrip("/") + "/"
        return lambda path: path == route or path.startswith(stem)
    pattern = "[^/]*".join(re.escape(part) for part in route.rstrip("/").split("*"))
    return re.compile(pattern + r"(?:/|\Z)").match


@dataclass
class GateTable:
    # (provider, route prefix) -> skill; route "" covers the whole provider.
    rules: dict = field(default_factory=dict)

    def __post_init__(self):
        # Per provider, the longest route first: the first match is the answer.
        self._ordered = defaultdict(list)
        for (provider, route), skill in sorted(self.rules.items(), key=lambda rule: -len(rule[0][1])):
            self._ordered[provider].append((route_matcher(route), skill))

    def required_skill(self, provider, path):
        rules = self._ordered.get(provider)
        if not rules:
            return None
        # Upstreams decode the path (`auth%5Ftokens` is `auth_tokens`); encoded
        # slashes never get this far (admission.safe_path).
        if "%" in path:
            path = unquote(path)
        for matches, skill in rules:
            if matches(path):
                return skill
        return None


# -- shipped gates into the database ---------------------------------------------

SEEDED = "default_gates_seeded"
# What the first seeding (Setting "gates_seeded", kept for older processes)
# wrote: the only gate shipped then.
FIRST_SEEDING = {("elevenlabs", "")}


def seed_gates(providers):
    """Write every shipped gate that this database has not had yet, once: the
    places (provider, route) already seeded are remembered, so a gate the
    operator deleted or changed stays as the operator left it. A gate a
    release takes back (`retired_gates`) is removed once, if its row still
    has the shipped skill."""
    with database.atomic():
        seeded, retired = _read_seeded()
        existing = {(g.provider, g.route): g for g in Gate.select()}
        for provider in providers.values():
            for route, skill in provider.default_gates.items():
                place = (provider.name, route)
                if place not in seeded and place not in existing:
                    Gate.insert(provider=provider.name, route=route, skill=skill).on_conflict_ignore().execute()
                seeded.add(place)
            for route, skill in provider.retired_gates.items():
                place = (provider.name, route)
                gate = existing.get(place)
                if place not in retired and gate is not None and gate.skill == skill:
                    gate.delete_instance()
                retired.add(place)
        value = json.dumps({"seeded": sorted(seeded), "retired": sorted(retired)})
        Setting.insert(name=SEEDED, value=value).on_conflict_replace().execute()
        Setting.insert(name="gates_seeded", value="1").on_conflict_ignore().execute()


def _read_seeded():
    row = Setting.get_or_none(Setting.name == SEEDED)
    if row is not None:
        data = json.loads(row.value)
        return {tuple(p) for p in data.get("seeded", [])}, {tuple(p) for p in data.get("retired", [])}
    if Setting.get_or_none(Setting.name == "gates_seeded") is not None:
        return set(FIRST_SEEDING), set()
    return set(), set()
