"""Prices the operator set, overriding the defaults shipped in the provider modules."""

import peewee

from .base import BaseModel, utcnow


class PriceOverride(BaseModel):
    provider = peewee.CharField(max_length=50)
    model = peewee.CharField(max_length=200)
    # Credits per million tokens, and per unit for the unit-priced routes.
    input = peewee.DecimalField(max_digits=20, decimal_places=9, null=True)
    cached_input = peewee.DecimalField(max_digits=20, decimal_places=9, null=True)
    cache_write = peewee.DecimalField(max_digits=20, decimal_places=9, null=True)
    output = peewee.DecimalField(max_digits=20, decimal_places=9, null=True)
    per_unit = peewee.DecimalField(max_digits=20, decimal_places=9, null=True)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("provider", "model"), True),)


class Setting(BaseModel):
    """Small process-wide values kept in the database (the admin token's hash)."""

    name = peewee.CharField(max_length=100, primary_key=True)
    value = peewee.TextField()
