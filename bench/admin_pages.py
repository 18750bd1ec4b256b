"""The admin pages on a big database: fill a scratch database with usage
records (bulk INSERTs), start Kylon on it, time each page (median of several
loads), on SQLite and on MariaDB.

    python bench/admin_pages.py                      # 1,000,000 records, both databases
    python bench/admin_pages.py --records 100000 --db sqlite

The records are spread over the last 30 days, across 40 agents, 80 keys (every
other one with a monthly credit limit) and 16 models of 4 providers, one in
ten failed. The rollups are built the way an
upgraded database gets them (kylon.rollups.rebuild, timed too).
"""

import argparse
import datetime
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kylon import rollups  # noqa: E402
from kylon.models import Agent, ApiKey, database, open_database, utcnow  # noqa: E402

MYSQL_SERVER = os.environ.get("KYLON_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
TOKEN = "kat_bench_" + uuid.uuid4().hex
MODELS = {
    "openai": ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3"],
    "anthropic": ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-3-5-haiku"],
    "gemini": ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash", "gemini-2.5-flash-lite"],
    "cerebras": ["llama-3.3-70b", "llama3.1-8b", "qwen-3-32b", "gpt-oss-120b"],
}
FAILURES = [("rejected", 402, "Out of credits"), ("upstream_error", 500, "upstream 500"), ("error", 504, "timed out")]
COLUMNS = (
    "request_id agent_id key_id provider route model stream status http_status input_tokens cached_input_tokens "
    "cache_write_tokens output_tokens reasoning_tokens unit units credits estimated fallback_price error "
    "upstream_request_id started_at duration_ms ttfb_ms"
).split()
PAGES = [
    "/admin",
    "/admin?range=7d",
    "/admin?range=30d&by=model",
    "/admin/agents",
    "/admin/agents/1",
    "/admin/keys",
    "/admin/usage",
    "/admin/usage?group=day",
    "/admin/usage?group=model",
    "/admin/usage?agent_id=1",
    "/admin/pricing",
    "/admin/top?range=30d",
    "/admin/keys/1",
    "/admin/audit",
]


def scratch_url(kind, folder):
    if kind == "sqlite":
        return f"sqlite:///{folder}/bench.db"
    import pymysql

    name = "kylon_bench_" + uuid.uuid4().hex[:8]
    conn = pymysql.connect(host="127.0.0.1", user="root")
    conn.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    conn.close()
    return f"{MYSQL_SERVER}/{name}"


def drop(url):
    if url.startswith("mysql"):
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", user="root")
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]}")
        conn.close()


def make_rows(count, keys, now):
    """Usage records as tuples in COLUMNS order, spread over 30 days."""
    rng = random.Random(16)
    models = [(p, m) for p, ms in MODELS.items() for m in ms]
    span = 30 * 24 * 3600
    for i in range(count):
        key_id, agent_id = keys[rng.randrange(len(keys))]
        provider, model = models[rng.randrange(len(models))]
        started = now - datetime.timedelta(seconds=rng.random() * span)
        status, http, error = ("completed", 200, "") if rng.random() > 0.1 else rng.choice(FAILURES)
        tokens_in, tokens_out = rng.randrange(10, 4000), rng.randrange(0, 1500)
        credits = 0 if status != "completed" else tokens_in * 150 + tokens_out * 600  # nano-credits
        yield (f"req_bench_{i:09d}", agent_id, key_id, provider, "chat.completions", model, 0, status, http,
               tokens_in, 0, 0, tokens_out, 0, "", "0", credits, 0, 0, error, "", started.isoformat(" "), 120, 40)


def fill(url, count):
    db = open_database(url)
    with db.connection_context():
        agents = [Agent.create(name=f"bench-agent-{i}", credits=random.choice(["50", "0.5", "-0.01", "900"])) for i in range(40)]
        keys = []
        for i in range(80):
            agent = agents[i % len(agents)]
            # Every other key with a monthly credit limit (the agents list and the keys table read its period's spend).
            limit = {"credit_limit": "25", "limit_reset": "monthly"} if i % 2 else {}
            key = ApiKey.create(agent=agent, name=f"key {i}", prefix=f"pak_bench{i:03d}", key_hash=uuid.uuid4().hex,
                                **limit)
            keys.append((key.id, agent.id))
        insert = f"INSERT INTO usagerecord ({', '.join(COLUMNS)}) VALUES ({', '.join([database.param] * len(COLUMNS))})"
        started = time.monotonic()
        rows = make_rows(count, keys, utcnow())
        while True:
            chunk = [row for _, row in zip(range(10000), rows)]
            if not chunk:
                break
            with db.atomic():
                db.cursor().executemany(insert, chunk)  # PyMySQL makes these multi-row INSERTs
        filled = time.monotonic() - started
        started = time.monotonic()
        rollups.rebuild()
        return filled, time.monotonic() - started


def start_kylon(url, folder):
    port = 18000 + random.randrange(1000)
    env = dict(os.environ, KYLON_DATABASE_URL=url, KYLON_ADMIN_TOKEN=TOKEN, KYLON_PORT=str(port),
               KYLON_JOURNAL_DIR=os.path.join(folder, "journal"), PYTHONPATH=ROOT)
    log = open(os.path.join(folder, "kylon.log"), "ab")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py")], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("Kylon did not start")


def time_pages(base, loads):
    client = httpx.Client(base_url=base, timeout=60)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', client.get("/admin/login").text).group(1)
    client.post("/admin/login", data={"_xsrf": xsrf, "token": TOKEN})
    results = {}
    for path in PAGES:
        assert client.get(path).status_code == 200, path  # warm: templates, caches, connection
        took = []
        for _ in range(loads):
            start = time.perf_counter()
            answer = client.get(path)
            took.append((time.perf_counter() - start) * 1000)
            assert answer.status_code == 200, path
        results[path] = statistics.median(took)
    return results


def run(kind, count, loads):
    folder = tempfile.mkdtemp(prefix=f"kylon-bench-{kind}-")
    url = scratch_url(kind, folder)
    try:
        filled, rebuilt = fill(url, count)
        print(f"\n{kind}: {count:,} records written in {filled:.1f} s, rollups built in {rebuilt:.1f} s")
        proc, base = start_kylon(url, folder)
        try:
            for path, ms in time_pages(base, loads).items():
                print(f"  {path:32} {ms:8.1f} ms (median of {loads})")
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        drop(url)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "mariadb", "both"], default="both")
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()
    for kind in ("sqlite", "mariadb") if args.db == "both" else (args.db,):
        run(kind, args.records, args.loads)


if __name__ == "__main__":
    main()
