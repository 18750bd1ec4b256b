"""The database binding and the field types every model shares."""

from decimal import Decimal, ROUND_HALF_EVEN
import datetime

import peewee

database = peewee.DatabaseProxy()

# Credits are kept as whole nano-credits in a BIGINT: integer arithmetic is exact
# in SQLite and MySQL alike (SQLite's DECIMAL would silently become a float), and
# `credits = credits - n` stays a single atomic UPDATE.
NANO = Decimal("0.000000001")
SCALE = 10**9


def to_nano(amount) -> int:
    return int((Decimal(amount) * SCALE).to_integral_value(ROUND_HALF_EVEN))


def from_nano(value: int) -> Decimal:
    return (Decimal(int(value)) / SCALE).quantize(NANO)


class CreditsField(peewee.BigIntegerField):
    """Decimal credits in Python, nano-credits (an integer) in the database."""

    def db_value(self, value):
        if value is None:
            return None
        return to_nano(value)

    def python_value(self, value):
        if value is None:
            return None
        return from_nano(value)


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class BaseModel(peewee.Model):
    class Meta:
        database = database
