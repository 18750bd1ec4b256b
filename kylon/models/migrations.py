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

from .account import Agent
from .pricing import Setting
from .rollup import UsageRollup
from .usage import UsageRecord

log = logging.getLogger("kylon.migrations")


def _v2_upstream_request_id(migrator):
    # The provider's own request id (x-request-id, request-id, X-Generation-Id).
    migrate(migrator.add_column("usagerecord", "upstream_request_id", UsageRecord.upstream_request_id))


def _unique_agent_names():
    """Agents sharing a name (compared without case) keep it on the oldest;
    each later one becomes "name #id", so the unique index can be made."""
    taken = set()
    for agent in Agent.select().order_by(Agent.id):
        name = agent.name
        while name.lower() in taken:
            name = f"{name} #{agent.id}"[:200]
        if name != agent.name:
            log.warning("agent %d renamed from %r to %r: agent names are unique now", agent.id, agent.name, name)
            Agent.update(name=name).where(Agent.id == agent.id).execute()
        taken.add(name.lower())


def _add_index(migrator, table, columns, unique=False):
    # A database made by create_tables already has the models' indexes.
    if not any(i.columns == list(columns) for i in migrator.database.get_indexes(table)):
        migrate(migrator.add_index(table, columns, unique))


def _v3_console(migrator):
    # The admin console: unique agent names, usage by agent or key over time,
    # and the hourly and daily rollups the overview reads.
    from .. import rollups

    _unique_agent_names()
    _add_index(migrator, "agent", ("name",), unique=True)
    _add_index(migrator, "usagerecord", ("agent_id", "started_at"))
    _add_index(migrator, "usagerecord", ("key_id", "started_at"))
    UsageRollup.create_table(safe=True)
    rollups.rebuild()


def _v7_frames(migrator):
    # WebSocket sessions count their messages each way (kylon/handlers/sockets.py).
    present = {c.name for c in migrator.database.get_columns("usagerecord")}
    for name in ("client_frames", "upstream_frames"):
        if name not in present:
            migrate(migrator.add_column("usagerecord", name, getattr(UsageRecord, name)))


# Numbered as released; a number another branch took may be missing here.
STEPS = {2: _v2_upstream_request_id, 3: _v3_console, 7: _v7_frames}
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
            for step in sorted(s for s in STEPS if s > version):
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
