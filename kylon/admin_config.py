"""The operator's configuration of prices and gates, as plain functions on
the database thread (the JSON API and the admin pages both call these)."""

from decimal import Decimal

from . import audit
from .admin import AdminError, parse_amount, row_id
from .billing import PRICE_FIELDS
from .models import NANO_QUANTUM, Gate, PriceOverride, database


def price_dict(p):
    return {"provider": p.provider, "model": p.model,
            **{f: (None if getattr(p, f) is None else str(getattr(p, f))) for f in PRICE_FIELDS}}


def list_price_overrides():
    return [price_dict(p) for p in PriceOverride.select().order_by(PriceOverride.provider, PriceOverride.model)]


def _override(provider, model):
    return PriceOverride.get_or_none((PriceOverride.provider == provider) & (PriceOverride.model == model))


def _price_fields(row):
    """An override's prices as the audit log compares them ({} for none), to
    the nano-credit (the two databases give back decimals of different lengths)."""
    if row is None:
        return {}
    return {f: None if getattr(row, f) is None else f"{Decimal(getattr(row, f)).quantize(NANO_QUANTUM):f}"
            for f in PRICE_FIELDS}


def set_price_override(provider, model, values, actor="admin"):
    if not provider or not model:
        raise AdminError(400, "'provider' and 'model' are required.")
    parsed = {}
    for f in PRICE_FIELDS:
        if values.get(f) not in (None, ""):
            parsed[f] = parse_amount(values[f], f)
            if parsed[f] < 0:
                raise AdminError(400, f"'{f}' must not be negative.")
    if not parsed:
        raise AdminError(400, "Give at least one of: " + ", ".join(PRICE_FIELDS) + ".")
    with database.atomic():
        before = _price_fields(_override(provider, model))
        PriceOverride.delete().where((PriceOverride.provider == provider) & (PriceOverride.model == model)).execute()
        row = PriceOverride.create(provider=provider, model=model, **parsed)
        change = audit.changes(before, _price_fields(row))
        if change:
            audit.record(actor, "price.set", "price", f"{provider}/{model}", change)
    return {"provider": provider, "model": model, **{k: str(v) for k, v in parsed.items()}}


def delete_price_override(provider, model, actor="admin"):
    with database.atomic():
        before = _price_fields(_override(provider, model))
        PriceOverride.delete().where((PriceOverride.provider == provider) & (PriceOverride.model == model)).execute()
        if before:
            change = {f: [v, None] for f, v in before.items() if v is not None}
            audit.record(actor, "price.delete", "price", f"{provider}/{model}", change)


def list_gates():
    return [{"id": g.id, "provider": g.provider, "route": g.route, "skill": g.skill} for g in Gate.select().order_by(Gate.id)]


def gate_subject(provider, route):
    """A gate's name in the audit log: what it guards (its id changes when it is set again)."""
    return f"{provider}{route}"


def set_gate(provider, route, skill, actor="admin"):
    if not provider or not isinstance(skill, str) or not skill.strip():
        raise AdminError(400, "'provider' and 'skill' are required.")
    route = route or ""
    # A gate's route is matched against the path under /proxy/<provider>.
    if not isinstance(route, str) or (route and not route.startswith("/")):
        raise AdminError(400, "'route' must be empty (the whole provider) or a path starting with '/'.")
    where = (Gate.provider == provider) & (Gate.route == route)
    with database.atomic():
        before = Gate.get_or_none(where)
        Gate.delete().where(where).execute()
        gate = Gate.create(provider=provider, route=route, skill=skill.strip())
        if before is None or before.skill != gate.skill:
            audit.record(actor, "gate.set", "gate", gate_subject(provider, route),
                         {"skill": [before and before.skill, gate.skill]})
    return {"id": gate.id, "provider": provider, "route": route, "skill": gate.skill}


def delete_gate(gate_id, actor="admin"):
    with database.atomic():
        gate = Gate.get_or_none(Gate.id == row_id(gate_id))
        if gate is None:
            raise AdminError(404, f"No gate with id {gate_id}.")
        gate.delete_instance()
        audit.record(actor, "gate.delete", "gate", gate_subject(gate.provider, gate.route), {"skill": [gate.skill, None]})
