"""The WebSocket part of the benchmark (`python bench/run.py --websockets`):
Gemini Live sessions through Kylon, beside nginx proxying the same fake
Live upstream (bench/fake_live.py, an echo after setup), and the fake called
directly as the baseline.

For each target: the memory of the proxy with N sessions open (setup sent,
setupComplete back: through Kylon, each is admitted, journaled and holds
credits), frames per second through one process while every session sends
a 4 KiB audio chunk and waits for its echo (each round trip is two frames
through the proxy), the proxy's CPU per frame, and the round trip of one
frame on an otherwise idle session: (proxy − direct) / 2 is the time a frame
takes to cross the proxy.
"""

import asyncio
import base64
import json
import os
import statistics
import sys
import time

import httpx
import websockets

import run  # bench/run.py: processes, memory, CPU, nginx

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
SETUP = json.dumps({"setup": {"model": "models/gemini-live-2.5-flash", "generationConfig": {"responseModalities": ["AUDIO"]}}})
# 100 ms of 16 kHz 16-bit PCM, as google-genai sends realtime audio.
AUDIO = json.dumps({"realtimeInput": {"audio": {"data": base64.b64encode(os.urandom(3200)).decode(),
                                                "mimeType": "audio/pcm;rate=16000"}}})

NGINX_CONF = run.NGINX_HEAD + """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


class Target:
    def __init__(self, name, url, service, headers=None):
        self.name, self.url, self.service, self.headers = name, url, service, headers or {}


def start_fake(workdir):
    port = run.free_port()
    service = run.Service("fake-live", [sys.executable, os.path.join(run.HERE, "fake_live.py"), "--port", str(port)],
                          logdir=workdir)
    run.wait_http(f"http://127.0.0.1:{port}/healthz", service, 15)
    return service, f"http://127.0.0.1:{port}"


def start_kylon(fake_url, workdir):
    port = run.free_port()
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": run.ROOT,
        "KYLON_PORT": str(port), "KYLON_DATABASE_URL": f"sqlite:///{workdir}/kylon-{port}.db",
        "KYLON_ADMIN_TOKEN": run.ADMIN_TOKEN, "GEMINI_API_KEY": "AIza-bench", "KYLON_GEMINI_BASE_URL": fake_url,
        "KYLON_JOURNAL_DIR": os.path.join(workdir, "journal"),
    }
    service = run.Service("kylon", [sys.executable, os.path.join(run.ROOT, "app.py")], env=env, cwd=run.ROOT,
                          logdir=workdir)
    base = f"http://127.0.0.1:{port}"
    run.wait_http(base + "/healthz", service, 30)
    admin = {"Authorization": f"Bearer {run.ADMIN_TOKEN}"}
    agent = httpx.post(base + "/admin/api/agents", headers=admin,
                       json={"name": "bench-live", "skills": [], "credits": "1000000"})
    agent.raise_for_status()
    key = httpx.post(base + f"/admin/api/agents/{agent.json()['id']}/keys", headers=admin, json={"name": "bench"})
    key.raise_for_status()
    return Target("kylon", "ws://127.0.0.1:%d/proxy/gemini%s" % (port, PATH), service,
                  {"x-goog-api-key": key.json()["key"]})


def start_nginx(fake_url, workdir):
    binary = run.ensure_tool("nginx", "nginx")
    port = run.free_port()
    conf_dir = os.path.join(workdir, "nginx-ws")
    os.makedirs(conf_dir, exist_ok=True)
    conf = os.path.join(conf_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=conf_dir, port=port, upstream_port=fake_url.rsplit(":", 1)[1]))
    service = run.Service("nginx-ws", [binary, "-e", os.path.join(conf_dir, "nginx-error.log"), "-c", conf,
                                       "-g", "daemon off;"], logdir=workdir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            run.socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return Target("nginx", f"ws://127.0.0.1:{port}{PATH}", service)


async def open_session(target):
    ws = await websockets.connect(target.url, additional_headers=target.headers, max_size=None,
                                  compression=None, open_timeout=60)
    await ws.send(SETUP)
    assert b"setupComplete" in await ws.recv()
    return ws


async def open_sessions(target, count):
    sessions = []
    for start in range(0, count, 50):  # 50 handshakes at a time
        sessions += await asyncio.gather(*(open_session(target) for _ in range(min(50, count - start))))
    return sessions


async def ping_pong(ws, until):
    trips = 0
    while time.monotonic() < until:
        await ws.send(AUDIO)
        await ws.recv()
        trips += 1
    return trips


async def measure(target, process, sessions_count, seconds, trips):
    idle_rss = run.rss_mb(process.pid)
    sessions = await open_sessions(target, sessions_count)
    await asyncio.sleep(2)  # the journal's checkpoint and the hold refresh have run
    open_rss = run.rss_mb(process.pid)
    cpu_before = run.cpu_seconds(process.pid)
    until = time.monotonic() + seconds
    started = time.monotonic()
    counts = await asyncio.gather(*(ping_pong(ws, until) for ws in sessions))
    elapsed = time.monotonic() - started
    cpu = run.cpu_seconds(process.pid) - cpu_before
    frames = 2 * sum(counts)
    # One session alone: the round trip of one frame.
    times = []
    ws = sessions[0]
    for _ in range(trips):
        t0 = time.perf_counter()
        await ws.send(AUDIO)
        await ws.recv()
        times.append(time.perf_counter() - t0)
    await asyncio.gather(*(ws.close() for ws in sessions))
    return {
        "sessions": sessions_count,
        "rss_idle_mb": round(idle_rss, 1),
        "rss_open_mb": round(open_rss, 1),
        "kb_per_session": round((open_rss - idle_rss) * 1024 / sessions_count, 1),
        "frames_per_s": round(frames / elapsed),
        "cpu_us_per_frame": round(cpu / frames * 1e6, 1) if frames else None,
        "round_trip_ms_p50": round(statistics.median(times) * 1000, 3),
        "round_trip_ms_p99": round(sorted(times)[int(len(times) * 0.99) - 1] * 1000, 3),
    }


def benchmark(workdir, sessions=500, seconds=5, trips=1000):
    """{target: figures} for direct, nginx and Kylon."""
    fake, fake_url = start_fake(workdir)
    results = {}
    try:
        direct = Target("direct", fake_url.replace("http://", "ws://") + PATH, None)
        results["direct"] = asyncio.run(measure(direct, fake, sessions, seconds, trips))
        for start in (start_nginx, start_kylon):
            target = start(fake_url, workdir)
            try:
                results[target.name] = asyncio.run(measure(target, target.service, sessions, seconds, trips))
            finally:
                target.service.stop()
    finally:
        fake.stop()
    direct_trip = results["direct"]["round_trip_ms_p50"]
    for name, figures in results.items():
        figures["added_ms_per_crossing"] = round((figures["round_trip_ms_p50"] - direct_trip) / 2, 3)
        run.log(f"websockets {name}: {figures}")
    return results


def markdown(results):
    names = [n for n in ("direct", "nginx", "kylon") if n in results]
    rows = [
        ("RSS, idle (MB)", "rss_idle_mb"), ("RSS with the sessions open (MB)", "rss_open_mb"),
        ("memory per open session (KB)", "kb_per_session"), ("frames/s through one process", "frames_per_s"),
        ("process CPU per frame (µs)", "cpu_us_per_frame"), ("round trip, one idle session, p50 (ms)", "round_trip_ms_p50"),
        ("round trip p99 (ms)", "round_trip_ms_p99"), ("added per crossing, p50 (ms)", "added_ms_per_crossing"),
    ]
    lines = ["| %d sessions | %s |" % (results[names[0]]["sessions"], " | ".join(names)),
             "|---|" + "---|" * len(names)]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(str(results[n][key]) for n in names) + " |")
    return "\n".join(lines)
