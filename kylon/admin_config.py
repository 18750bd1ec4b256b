"""The operator's configuration of prices and gates, as plain functions on
the database thread (the JSON API and the admin pages both call these)."""

from .admin import AdminError, parse_amount, row_id
from .billing import PRICE_FIELDS
from .models import Gate, PriceOverride, database


def list_price_overrides():
    return [
        {"provider": p.provider, "model": p.model, **{f: (None if getattr(p, f) is None else str(getattr(p, f))) for f in PRICE_FIELDS}}
        for p in PriceOverride.select().order_by(PriceOverride.provider, PriceOverride.model)
    ]


def set_price_override(provider, model, values):
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
        PriceOverride.delete().where((PriceOverride.provider == provider) & (PriceOverride.model == model)).execute()
        PriceOverride.create(provider=provider, model=model, **parsed)
    return {"provider": provider, "model": model, **{k: str(v) for k, v in parsed.items()}}


def delete_price_override(provider, model):
    PriceOverride.delete().where((PriceOverride.provider == provider) & (PriceOverride.model == model)).execute()


def list_gates():
    return [{"id": g.id, "provider": g.provider, "route": g.route, "skill": g.skill} for g in Gate.select().order_by(Gate.id)]


def set_gate(provider, route, skill):
    if not provider or not isinstance(skill, str) or not skill.strip():
        raise AdminError(400, "'provider' and 'skill' are required.")
    route = route or ""
    # A gate's route is matched against the path under /proxy/<provider>.
    if not isinstance(route, str) or (route and not route.startswith("/")):
        raise AdminError(400, "'route' must be empty (the whole provider) or a path starting with '/'.")
    with database.atomic():
        Gate.delete().where((Gate.provider == provider) & (Gate.route == route)).execute()
        gate = Gate.create(provider=provider, route=route, skill=skill.strip())
    return {"id": gate.id, "provider": provider, "route": route, "skill": gate.skill}


def delete_gate(gate_id):
    deleted = Gate.delete().where(Gate.id == row_id(gate_id)).execute()
    if not deleted:
        raise AdminError(404, f"No gate with id {gate_id}.")
