"""Schema versions. A database created by an older Kylon is upgraded at start.

`Setting("schema_version")` holds the version a database is at. A database
with Kylon's tables but no version row predates versioning: version 1. Each
step upgrades one version with peewee's schema migrator; new tables need no
step (create_tables makes them). Several processes starting together on one
MySQL database take a named lock, so only one migrates.
"""

import logging

import peewee
from playhouse.migrate import MySQLMigrator, SqliteMigrator, migrate

from .pricing import Setting
from .usage import UsageRecord

log = logging.getLogger("kylon.migrations")


def _v2_upstream_request_id(migrator):
    # The provider's own request id (x-request-id, request-id, X-Generation-Id).
    migrate(migrator.add_column("usagerecord", "upstream_request_id", UsageRecord.upstream_request_id))


STEPS = {2: _v2_upstream_request_id}
SCHEMA_VERSION = max(STEPS)


def schema_version(db):
    if not db.table_exists("setting"):
        return None
    row = Setting.get_or_none(Setting.name == "schema_version")
    if row is not None:
        return int(row.value)
    return 1 if db.table_exists("usagerecord") else None


def set_version(version):
    Setting.insert(name="schema_version", value=str(version)).on_conflict_replace().execute()


def upgrade(db, all_models):
    """Create or upgrade the schema; returns the versions it went through."""
    mysql = isinstance(db, peewee.MySQLDatabase)
    if mysql:
        db.execute_sql("SELECT GET_LOCK('kylon_schema', 60)")
    try:
        version = schema_version(db)
        done = []
        if version is not None and version < SCHEMA_VERSION:
            migrator = MySQLMigrator(db) if mysql else SqliteMigrator(db)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                log.info("upgrading the database schema to version %d", step)
                with db.atomic():
                    STEPS[step](migrator)
                    set_version(step)
                done.append(step)
        db.create_tables(all_models, safe=True)
        if version is None:
            set_version(SCHEMA_VERSION)
        return done
    finally:
        if mysql:
            db.execute_sql("SELECT RELEASE_LOCK('kylon_schema')")
