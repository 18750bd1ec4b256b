"""A database in the shape an older Kylon left is upgraded at start."""


import openai
import pytest
from playhouse.migrate import MySQLMigrator, SqliteMigrator, migrate

from kylon.models import SCHEMA_VERSION, Setting, UsageRecord, open_database

from .conftest import drop_database, scratch_database_url
from .test_openai_e2e import MESSAGES


def make_version_1_database(url):
    """Kylon's tables as version 1 had them: no usage_record.upstream_request_id,
    no schema_version row (versions came with version 2), one old record."""
    db = open_database(url)
    try:
        migrator = MySQLMigrator(db) if url.startswith("mysql") else SqliteMigrator(db)
        migrate(migrator.drop_column("usagerecord", "upstream_request_id"),
                migrator.drop_column("usagerecord", "client_frames"),
                migrator.drop_column("usagerecord", "upstream_frames"))
        Setting.delete().where(Setting.name == "schema_version").execute()
        db.execute_sql(
            "INSERT INTO usagerecord (request_id, agent_id, provider, route, model, stream, status, input_tokens, "
            "cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, unit, units, credits, "
            "estimated, fallback_price, error, started_at, duration_ms) VALUES "
            "('req_old', 1, 'openai', 'chat.completions', 'gpt-4o-mini', 0, 'completed', 5, 0, 0, 7, 0, '', 0, "
            "1234, 0, 0, '', %s, 10)" % ("'2025-01-01 00:00:00'"),
        )
        assert "upstream_request_id" not in [c.name for c in db.get_columns("usagerecord")]
    finally:
        db.close()


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_older_database_is_upgraded_at_start(kind, tmp_path_factory, make_kylon):
    url = scratch_database_url(kind, tmp_path_factory)
    try:
        make_version_1_database(url)
        k = make_kylon(database_url=url)
        _, key = k.agent_with_key("5")
        raw = openai.OpenAI(base_url=k.url + "/proxy/openai/v1", api_key=key, max_retries=0) \
            .chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        record = k.usage(raw.headers["x-kylon-request-id"])
        assert record["upstream_request_id"] == "req_fake_chat"
        old = k.usage("req_old")
        assert old["output_tokens"] == 7 and old["credits"] == "0.000001234" and old["upstream_request_id"] == ""
        assert old["client_frames"] == 0 and old["upstream_frames"] == 0
        k.stop()
        db = open_database(url)
        try:
            assert Setting.get(Setting.name == "schema_version").value == str(SCHEMA_VERSION)
            assert UsageRecord.select().count() == 2
        finally:
            db.close()
    finally:
        drop_database(url)
