"""Kylon's benchmark: Kylon side by side with nginx and LiteLLM, in front of the
same fake OpenAI upstream, and that upstream called directly as the baseline.

    python bench/run.py            # the full run (about 8 minutes on 2 CPUs)
    python bench/run.py --quick    # a short check that everything works (about 2.5 minutes)
    python bench/run.py --profile  # also profile Kylon with py-spy (about 1 minute more)

Everything runs on 127.0.0.1. Results: a markdown table on stdout, the raw
figures in bench/results/bench-<time>.json (and latest.json / latest.md).
See bench/README.md for what each row means.
"""

import argparse
import asyncio
import collections
import functools
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import loadclient  # noqa: E402  (bench/ is not a package)

RESULTS = os.path.join(HERE, "results")
LITELLM_VENV = os.environ.get("BENCH_LITELLM_VENV") or os.path.join(HERE, ".venv-litellm")
UPSTREAM_KEY = "sk-bench-upstream"
LITELLM_MASTER_KEY = "sk-bench-master"
ADMIN_TOKEN = "kat_bench_" + uuid.uuid4().hex
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant. Answer in one short sentence."},
    {"role": "user", "content": "Say hello to the benchmark, and mention the weather in one word."},
]


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def chat(model, stream=False):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    if stream:
        body["stream"] = True
    return body


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes ------------------------------------------------------------------
def tree_pids(pid):
    """`pid` and all its descendants."""
    pids = [pid]
    for p in pids:
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def rss_mb(pid):
    """Resident memory of a process and its descendants, in MB."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pid):
    """User + system CPU time of a process and its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / ticks


class Service:
    """A subprocess with its output in a log file."""

    def __init__(self, name, argv, env=None, cwd=None, logdir=None):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def tail(self, lines=15):
        with open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def wait_http(url, service, timeout, headers=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited at start: {service.tail()}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{service.name} did not answer {url} within {timeout:.0f} s: {service.tail()}")


# -- targets ----------------------------------------------------------------------
class Target:
    """Something the load goes to: a chat-completions URL, the headers a client
    sends, and the process whose memory and CPU are read."""

    def __init__(self, name, label):
        self.name = name
        self.label = label
        self.url = None
        self.headers = {}
        self.service = None  # what stop() stops
        self.process = None  # whose memory and CPU are read (the fake's, for direct)
        self.error = None
        # The floor relay cannot stop an upstream transfer when its client
        # leaves: endless and held streams are not sent to it.
        self.finite_streams_only = False
        # Starts a fresh copy of this target (see quiet()); None for the fake.
        self.restart = None

    @property
    def available(self):
        return self.error is None and self.url is not None

    @property
    def endpoint(self):
        return loadclient.Endpoint(self.url, self.headers)

    def stop(self):
        if self.service is not None:
            self.service.stop()


def start_fake(workdir):
    port = free_port()
    service = Service(
        "fake-upstream",
        [sys.executable, os.path.join(HERE, "fake_upstream.py"), "--port", str(port)],
        logdir=workdir,
    )
    wait_http(f"http://127.0.0.1:{port}/_stats", service, 15)
    return service, f"http://127.0.0.1:{port}"


def direct_target(fake_service, fake_url):
    target = Target("direct", "direct (fake upstream)")
    target.url = fake_url + "/v1/chat/completions"
    target.process = fake_service  # stopped last, by main()
    return target


# Fields the bench key is made with (--key-fields): limits, so their cost is measured too.
KEY_FIELDS = {}


def start_kylon(fake_url, workdir, root=ROOT, prefix=(), startup_seconds=30, name="kylon", label="Kylon"):
    """Kylon from the checkout `root`, its command run under `prefix` (a
    profiler: see instructions.py), with an agent and a key made."""
    target = Target(name, label)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": root,
        "KYLON_PORT": str(port),
        "KYLON_DATABASE_URL": f"sqlite:///{workdir}/kylon-{port}.db",  # fresh, also after a restart
        "KYLON_ADMIN_TOKEN": ADMIN_TOKEN,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "KYLON_OPENAI_BASE_URL": fake_url,
    }
    target.service = target.process = Service(
        name, [*prefix, sys.executable, os.path.join(root, "app.py")], env=env, cwd=root, logdir=workdir
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz", target.service, startup_seconds)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    agent = httpx.post(
        base + "/admin/api/agents", headers=admin, json={"name": "bench", "skills": [], "credits": "1000000"}
    )
    agent.raise_for_status()
    key = httpx.post(base + f"/admin/api/agents/{agent.json()['id']}/keys", headers=admin, json={"name": "bench", **KEY_FIELDS})
    key.raise_for_status()
    target.url = base + "/proxy/openai/v1/chat/completions"
    target.headers = {"Authorization": f"Bearer {key.json()['key']}"}
    return target


def start_floor(fake_url, workdir):
    target = Target("floor", "Tornado+curl floor")
    port = free_port()
    target.service = target.process = Service(
        "floor",
        [sys.executable, os.path.join(HERE, "floor_relay.py"), "--port", str(port), "--upstream", fake_url],
        logdir=workdir,
    )
    target.url = f"http://127.0.0.1:{port}/v1/chat/completions"
    target.finite_streams_only = True
    return wait_listening(target, port, 15, "the floor relay")


def wait_listening(target, port, seconds, what):
    """The target once its port accepts connections; else with an error set."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return target
        except OSError:
            if not target.service.alive():
                break
            time.sleep(0.1)
    target.error = f"{what} did not start: {target.service.tail()}"
    return target


# The part of every nginx configuration the benchmarks run (here and bench/sockets.py).
NGINX_HEAD = """\
worker_processes 1;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 10000; }}
http {{
    access_log {dir}/nginx-access.log combined buffer=64k;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
"""
NGINX_CONF = NGINX_HEAD + """\
    keepalive_requests 1000000;
    upstream fake {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def ensure_tool(command, package):
    """Debian's `package` when `command` is missing (as root, or through sudo)."""
    if shutil.which(command) or os.path.exists(f"/usr/sbin/{command}"):
        return shutil.which(command) or f"/usr/sbin/{command}"
    log(f"installing {package} with apt-get")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(sudo + ["apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", package], env=env, check=True)
    return shutil.which(command) or f"/usr/sbin/{command}"


def start_nginx(fake_url, workdir):
    target = Target("nginx", "nginx proxy_pass")
    try:
        binary = ensure_tool("nginx", "nginx")
    except (subprocess.CalledProcessError, OSError) as e:
        target.error = f"nginx could not be installed: {e}"
        return target
    port = free_port()
    conf_dir = os.path.join(workdir, "nginx")
    os.makedirs(conf_dir, exist_ok=True)
    conf = os.path.join(conf_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=conf_dir, port=port, upstream_port=fake_url.rsplit(":", 1)[1]))
    target.service = target.process = Service(
        "nginx", [binary, "-e", os.path.join(conf_dir, "nginx-error.log"), "-c", conf, "-g", "daemon off;"],
        logdir=workdir,
    )
    target.url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return wait_listening(target, port, 10, "nginx")


LITELLM_CONFIG = """\
model_list:
  - model_name: "bench"
    litellm_params:
      model: "openai/bench"
      api_base: "{fake_url}/v1"
      api_key: "{key}"
  # The streams' model names say how the fake streams (see fake_upstream.py).
  - model_name: "*"
    litellm_params:
      model: "openai/*"
      api_base: "{fake_url}/v1"
      api_key: "{key}"
general_settings:
  master_key: "{master_key}"
"""


def ensure_litellm():
    """LiteLLM's proxy in its own virtual environment, kept between runs."""
    binary = os.path.join(LITELLM_VENV, "bin", "litellm")
    if os.path.exists(binary):
        return binary
    log("installing litellm[proxy] into bench/.venv-litellm (once; about a minute)")
    subprocess.run([sys.executable, "-m", "venv", LITELLM_VENV], check=True)
    pip = os.path.join(LITELLM_VENV, "bin", "pip")
    result = subprocess.run(
        [pip, "install", "--quiet", "--disable-pip-version-check", "litellm[proxy]"],
        capture_output=True, text=True, timeout=900,
    )
    if result.returncode != 0 or not os.path.exists(binary):
        shutil.rmtree(LITELLM_VENV, ignore_errors=True)  # a half install is not cached
        output = (result.stderr or result.stdout).splitlines()
        reason = next((line for line in reversed(output) if line.startswith("ERROR")), " ".join(output)[-300:])
        raise RuntimeError(f"pip install 'litellm[proxy]' failed: {reason}")
    return binary


def start_litellm(fake_url, workdir):
    target = Target("litellm", "LiteLLM proxy")
    try:
        binary = ensure_litellm()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        target.error = f"LiteLLM unavailable: {e}"
        return target
    port = free_port()
    config = os.path.join(workdir, "litellm.yaml")
    with open(config, "w") as f:
        f.write(LITELLM_CONFIG.format(fake_url=fake_url, key=UPSTREAM_KEY, master_key=LITELLM_MASTER_KEY))
    env = {
        "PATH": os.path.join(LITELLM_VENV, "bin") + ":" + os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        # Everything stays on this machine: the shipped price map, no telemetry.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    target.service = target.process = Service(
        "litellm",
        [binary, "--config", config, "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env=env, cwd=workdir, logdir=workdir,
    )
    target.url = f"http://127.0.0.1:{port}/v1/chat/completions"
    target.headers = {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}
    target.health_url = f"http://127.0.0.1:{port}/health/liveliness"
    return target


def wait_litellm(target):
    if target.error:
        return
    try:
        wait_http(target.health_url, target.service, 120)
    except RuntimeError as e:
        target.error = f"LiteLLM did not start: {e}"


async def check_target(target):
    """One plain and one streamed call must work before anything is measured."""
    if not target.available:
        return
    endpoint = target.endpoint
    try:
        reader, writer = await endpoint.connect()
        writer.write(endpoint.request(chat("bench")))
        status, body = await asyncio.wait_for(loadclient.read_response(reader), 30)
        writer.close()
        if status != 200 or b'"usage"' not in body:
            raise RuntimeError(f"plain call answered {status}: {body[:300]!r}")
        stream = await asyncio.wait_for(loadclient.run_stream(endpoint, chat("bench-c5-i0", stream=True)), 30)
        if stream.error or stream.chunks < 5:
            raise RuntimeError(f"streamed call failed: {stream.error or f'{stream.chunks} chunks'}")
    except (OSError, RuntimeError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        target.error = f"check call failed: {e}"


# -- measurements --------------------------------------------------------------------
def wrk(target, connections, duration, threads=2):
    env = {
        **os.environ,
        "BENCH_BODY": json.dumps(chat("bench"), separators=(",", ":")),
        "BENCH_AUTH": target.headers.get("Authorization", ""),
    }
    cpu_before = cpu_seconds(target.process.pid)
    result = subprocess.run(
        ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{duration}s",
         "--timeout", "10s", "--latency", "-s", os.path.join(HERE, "post.lua"), target.url],
        env=env, capture_output=True, text=True, timeout=duration + 60,
    )
    cpu = cpu_seconds(target.process.pid) - cpu_before
    line = next((l for l in result.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {result.stdout[-500:]} {result.stderr[-500:]}")
    raw = json.loads(line[len("BENCH_JSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeout_errors"))
    return {
        "rps": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": errors,
        "requests": raw["requests"],
        "cpu_us_per_request": cpu / raw["requests"] * 1e6 if raw["requests"] else None,
        "raw": raw,
    }


async def fake_stats(fake_url, prefix=""):
    probe = loadclient.Endpoint(fake_url + "/_stats")
    reader, writer = await probe.connect()
    writer.write(f"GET /_stats?prefix={prefix} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n".encode())
    _, body = await loadclient.read_response(reader)
    writer.close()
    return json.loads(body)


async def wait_upstream_idle(fake_url, timeout):
    """Until the fake has no stream open (a proxy may keep upstream streams
    running after its clients left). → streams still open at the end."""
    deadline = time.monotonic() + timeout
    while True:
        open_now = (await fake_stats(fake_url))["open_streams"]
        if open_now == 0:
            return 0
        if time.monotonic() >= deadline:
            log(f"  the upstream still has {open_now} streams open after {timeout:g} s")
            return open_now
        await asyncio.sleep(0.1)


async def memory_with_open_streams(target, fake_url, counts, settle, probes):
    """RSS idle and with each count of streams open at once (the upstream holds
    them silent), and the first chunk of `probes` new streams started one at a
    time while they are open; then how many upstream streams the target still
    keeps after every client left."""
    result = {"rss_idle_mb": rss_mb(target.process.pid)}
    streams = []
    tag = uuid.uuid4().hex[:8]
    try:
        for count in counts:
            started = time.monotonic()
            more, failures, untried = await loadclient.open_streams(
                target.endpoint,
                lambda i: chat(f"bench-hold-rss{tag}{len(streams) + i}", stream=True),
                count - len(streams),
            )
            streams += more
            await asyncio.sleep(settle)
            result[f"rss_{count}_mb"] = rss_mb(target.process.pid)
            probe = await loadclient.one_at_a_time(target.endpoint, chat("bench-c2-i0", stream=True), probes, 0.02)
            result[f"new_stream_{count}"] = probe
            result[f"open_{count}_seconds"] = time.monotonic() - started
            result[f"failed_{count}"] = len(failures) + untried
            if failures:
                result[f"failure_sample_{count}"] = failures[0]
                log(f"  {target.name}: only {len(streams)} of {count} streams opened: {failures[0]}")
                break
    finally:
        for stream in streams:
            stream.close()
    # The held streams of this test only (a target's other leftovers aside).
    deadline = time.monotonic() + settle + 4
    while True:
        left_open = (await fake_stats(fake_url, prefix=f"rss{tag}"))["open_watched"]
        if left_open == 0 or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    result["upstream_open_after_close"] = left_open
    return result


async def disconnects(target, fake_url, mode, samples, timeout):
    delays = []
    errors = []
    for _ in range(samples):
        watch_id = uuid.uuid4().hex
        try:
            delay = await loadclient.disconnect_delay(
                target.endpoint,
                chat(f"bench-{mode}-{watch_id}", stream=True),
                lambda w: f"{fake_url}/_closed/{w}",
                watch_id,
                timeout,
            )
        except (OSError, RuntimeError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            errors.append(str(e) or type(e).__name__)
            continue
        delays.append(delay)
        if delay is None:
            break  # it never closes: one sample tells
    await wait_upstream_idle(fake_url, 2)
    closed = [d * 1000 for d in delays if d is not None]
    return {
        "samples_ms": [None if d is None else d * 1000 for d in delays],
        "errors": len(errors),
        "error_sample": errors[0] if errors else None,
        "p50_ms": statistics.median(closed) if closed and len(closed) == len(delays) else None,
        "never_closed": len(delays) - len(closed),
        "timeout_s": timeout,
    }


def quiet(target, timeout=15):
    """Waits until the target has stopped working on what the last measurement
    left behind (under 10% of a CPU over 0.3 s), so the next one starts clean.
    A target still busy after `timeout` (LiteLLM goes on with a stream's
    backlog long after its client left) is restarted: it would otherwise eat
    the CPU of every later measurement. → seconds waited (None: restarted)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(target.process.pid)
        time.sleep(0.3)
        if cpu_seconds(target.process.pid) - before < 0.03:
            waited = time.monotonic() - started
            if waited > 1:
                log(f"  {target.name} kept working for {waited:.1f} s after the measurement")
            return waited
    if target.restart is None:
        log(f"  {target.name} is still busy {timeout} s after the measurement")
        return timeout
    log(f"  {target.name} is still busy {timeout} s after the measurement: restarting it")
    target.stop()
    fresh = target.restart()
    if fresh.name == "litellm":
        wait_litellm(fresh)
    asyncio.run(check_target(fresh))
    for name in ("url", "headers", "service", "process", "error"):
        setattr(target, name, getattr(fresh, name))
    return None


# -- profiling -------------------------------------------------------------------
def summarize_profile(raw_path, top=20):
    """Top functions of a py-spy raw (collapsed stacks) file. Samples of the
    database thread waiting for work are idle and left out. `own`: where the
    sample was taken; `kylon`: Kylon's own functions (kylon/, app.py) with
    everything they called; `threads`: the event loop's share and the
    database thread's."""
    own = collections.Counter()
    inclusive = collections.Counter()
    threads = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            count = int(count)
            frames = []
            for frame in stack.split(";"):
                name, sep, where = frame.partition(" (")
                if sep:
                    frames.append((name, short_path(where.rstrip(")").rsplit(":", 1)[0])))
            if not frames or frames[-1][0] == "_worker":
                continue  # a thread-pool thread waiting on its queue
            total += count
            threads["database thread" if any(n == "_worker" for n, _ in frames) else "event loop"] += count
            own[f"{frames[-1][0]} ({frames[-1][1]})"] += count
            for name, file in set(frames):
                if file.startswith("kylon/") or (file == "app.py" and name not in ("<module>", "main")):
                    inclusive[f"{name} ({file})"] += count
    pct = lambda n: round(100 * n / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "threads": {name: pct(n) for name, n in threads.most_common()},
        "own": [(name, pct(n)) for name, n in own.most_common(top)],
        "kylon": [(name, pct(n)) for name, n in inclusive.most_common(top)],
    }


def short_path(path):
    for marker in ("site-packages/", "lib/python3.11/", ROOT + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def py_spy(pid, seconds, out, fmt):
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
         "--format", fmt, "--output", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


async def stream_load(target, seconds):
    """Keeps 100 streams of 50 chunks 10 ms apart going for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await loadclient.concurrent_streams(target.endpoint, chat("bench-c50-i10", stream=True), 100)


def profile_kylon(target, seconds, stamp):
    if shutil.which("py-spy") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=False)
    if shutil.which("py-spy") is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    profiles = {}
    for kind in ("nonstream", "stream"):
        for fmt in ("raw", "flamegraph"):
            out = os.path.join(RESULTS, f"profile-{kind}-{stamp}.{'txt' if fmt == 'raw' else 'svg'}")
            spy = py_spy(target.process.pid, seconds, out, fmt)
            time.sleep(0.5)
            if kind == "nonstream":
                load = wrk(target, 50, seconds)
                log(f"  profiled c=50: {load['rps']:.0f} req/s under py-spy ({fmt})")
            else:
                asyncio.run(stream_load(target, seconds))
                log(f"  profiled 100 streams x 50 chunks ({fmt})")
            _, err = spy.communicate(timeout=seconds + 60)
            if spy.returncode != 0:
                return {"error": f"py-spy failed: {err[-500:]}"}
            if fmt == "raw":
                profiles[kind] = {"raw": out, **summarize_profile(out)}
            else:
                profiles[kind]["svg"] = out
    return profiles


# -- the run -------------------------------------------------------------------------
def median_of(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def measure(targets, fake_url, opts):
    """Every measurement, repeated `runs` times with the targets' order rotated
    so that background load falls on all of them alike. → per target, metric:
    the list of per-run results."""
    results = {t.name: collections.defaultdict(list) for t in targets}
    live = [t for t in targets if t.available]
    for target in live:
        wrk(target, 10, 1)  # warm-up: connections, caches, lazy imports
        quiet(target)
    # Memory first, while each process has served only the warm-up.
    for target in live:
        if target.finite_streams_only:
            continue
        r = asyncio.run(memory_with_open_streams(target, fake_url, opts.open_streams, opts.settle, opts.probes))
        r["busy_after_s"] = quiet(target)
        results[target.name]["memory"].append(r)
        log(f"  {target.name:8} memory: {r}")
    for run in range(opts.runs):
        order = live[run % len(live):] + live[: run % len(live)]
        log(f"run {run + 1}/{opts.runs}")
        for connections in opts.connections:
            for target in order:
                try:
                    r = wrk(target, connections, opts.duration)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    log(f"  {target.name:8} c={connections:<4} wrk failed: {e}")
                    results[target.name][f"c{connections}"].append({"errors": 1, "error": str(e)})
                    continue
                r["busy_after_s"] = quiet(target)
                results[target.name][f"c{connections}"].append(r)
                log(f"  {target.name:8} c={connections:<4} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.2f} ms"
                    f"  p99 {r['p99_ms']:7.2f} ms  cpu {r['cpu_us_per_request']:.0f} us/req  errors {r['errors']}")
        for target in order:
            r = asyncio.run(loadclient.fixed_rate(target.endpoint, chat("bench"), opts.rate, opts.duration))
            r["busy_after_s"] = quiet(target)
            results[target.name]["fixed"].append(r)
            log(f"  {target.name:8} {opts.rate} req/s fixed: p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
                f"  achieved {r['achieved_rps']:.0f}/s  errors {r['errors']}")
        for target in order:
            model = f"bench-c{opts.stream_chunks}-i{opts.stream_interval_ms}"
            r = asyncio.run(loadclient.concurrent_streams(target.endpoint, chat(model, stream=True), opts.streams))
            r["busy_after_s"] = quiet(target)
            results[target.name]["streams"].append(r)
            log(f"  {target.name:8} {opts.streams} streams: first chunk p50 {r['ttfc_p50_ms']} ms, "
                f"total p50 {r['total_p50_ms']} ms, errors {r['errors']}")
        for target in order:
            if target.finite_streams_only:
                continue
            r = asyncio.run(throughput(target, fake_url, opts))
            r["busy_after_s"] = quiet(target)
            results[target.name]["relay"].append(r)
            log(f"  {target.name:8} relay: {r['chunks_per_s']:.0f} chunks/s, errors {r['errors']}")
    live = [t for t in live if not t.finite_streams_only]
    for target in live:
        for mode in ("hold", "tick"):
            r = asyncio.run(disconnects(target, fake_url, mode, opts.disconnect_samples, opts.disconnect_timeout))
            r["busy_after_s"] = quiet(target)
            results[target.name][f"disconnect_{mode}"].append(r)
            log(f"  {target.name:8} disconnect ({mode}): {r['samples_ms']}")
    return results


async def throughput(target, fake_url, opts):
    """SSE chunks per second through the target: `relay_streams` streams at
    once, each sent by the upstream as fast as the target takes it and read to
    its end. The streams' length is fitted to the target (a short probe first)
    so that the measurement lasts about `relay_seconds` whatever its speed."""
    probe = await loadclient.relay_throughput(
        target.endpoint, chat("bench-c500-i0", stream=True), opts.relay_streams
    )
    rate = probe["chunks_per_s"] or 1000
    chunks = int(min(max(500, rate * opts.relay_seconds / opts.relay_streams), 1_000_000))
    result = await loadclient.relay_throughput(
        target.endpoint, chat(f"bench-c{chunks}-i0", stream=True), opts.relay_streams
    )
    result["chunks_per_stream"] = chunks
    await wait_upstream_idle(fake_url, 5)
    return result


# -- the table ------------------------------------------------------------------------
def fmt_number(value, digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def build_rows(results, targets, opts):
    """(label, {target: cell}) rows: the median over runs, and its ratio to
    (or, for the fixed-rate latencies, the milliseconds added to) the direct
    upstream's median from the same invocation."""
    direct = results.get("direct", {})
    rows = []

    def row(label, metric, key, unit, digits=0, compare="ratio"):
        base = median_of(direct.get(metric, []), key)
        cells = {}
        for t in targets:
            runs = results.get(t.name, {}).get(metric, [])
            value = median_of(runs, key)
            if not t.available:
                cells[t.name] = "n/a"
                continue
            if value is None:
                cells[t.name] = "—"
                continue
            text = f"{fmt_number(value, digits)} {unit}".strip()
            if t.name != "direct" and base:
                if compare == "added":
                    text += f" ({value - base:+.{digits}f})"
                elif compare == "ratio":
                    text += f" ({value / base:.2f}×)"
            errors = sum(r.get("errors") or 0 for r in runs)
            if errors:
                text += f" ⚠ {errors} failed"
            cells[t.name] = text
        rows.append((label, cells))
        return cells

    for c in opts.connections:
        row(f"req/s, c={c}", f"c{c}", "rps", "/s")
        row(f"p50 latency, c={c}", f"c{c}", "p50_ms", "ms", 2)
        row(f"p99 latency, c={c}", f"c{c}", "p99_ms", "ms", 2)
    mid = 50 if 50 in opts.connections else opts.connections[0]
    row(f"CPU per request, c={mid}", f"c{mid}", "cpu_us_per_request", "µs")
    row(f"p50 at {opts.rate} req/s fixed (added)", "fixed", "p50_ms", "ms", 2, compare="added")
    row(f"p99 at {opts.rate} req/s fixed (added)", "fixed", "p99_ms", "ms", 2, compare="added")
    row(f"rate achieved of {opts.rate} req/s", "fixed", "achieved_rps", "/s", compare=None)
    row(f"{opts.streams} streams: first chunk p50", "streams", "ttfc_p50_ms", "ms", 1)
    row(f"{opts.streams} streams: total time p50", "streams", "total_p50_ms", "ms", 0)
    row(f"relay, {opts.relay_streams} streams at full speed", "relay", "chunks_per_s", "chunks/s")
    for mode, label in (("hold", "silent"), ("tick", "active")):
        cells = row(f"disconnect → upstream closed, {label} upstream", f"disconnect_{mode}", "p50_ms", "ms", 1,
                    compare=None)
        for t in targets:
            runs = results.get(t.name, {}).get(f"disconnect_{mode}", [])
            if runs and runs[0]["never_closed"]:
                cells[t.name] = f"not within {runs[0]['timeout_s']:g} s"
    row("RSS idle", "memory", "rss_idle_mb", "MB", compare=None)
    for count in opts.open_streams:
        cells = row(f"RSS, {count:,} open streams", "memory", f"rss_{count}_mb", "MB", compare=None)
        for t in targets:
            runs = results.get(t.name, {}).get("memory", [])
            if runs and runs[0].get(f"failed_{count}"):
                opened = count - runs[0][f"failed_{count}"]
                cells[t.name] += f" (only {opened:,} opened)"
            elif runs and t.available and f"rss_{count}_mb" not in runs[0]:
                cells[t.name] = "not tried"
    for count in opts.open_streams:
        # Medians over the probes of the one memory run (not over runs).
        for t in targets:
            for r in results.get(t.name, {}).get("memory", []):
                if f"new_stream_{count}" in r:
                    r[f"new_stream_{count}_ttfc_p50_ms"] = r[f"new_stream_{count}"]["ttfc_p50_ms"]
        cells = row(f"first chunk p50 of a new stream, {count:,} others open (added)", "memory",
                    f"new_stream_{count}_ttfc_p50_ms", "ms", 2, compare="added")
        for t in targets:
            failed = sum(r[f"new_stream_{count}"]["errors"] for r in results.get(t.name, {}).get("memory", [])
                         if f"new_stream_{count}" in r)
            if failed:
                cells[t.name] += f" ⚠ {failed} of {opts.probes} failed"
    row("upstream streams still open after clients left", "memory", "upstream_open_after_close", "", compare=None)
    return rows


def markdown_table(rows, targets):
    head = "| | " + " | ".join(t.label for t in targets) + " |"
    lines = [head, "|---" * (len(targets) + 1) + "|"]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(cells[t.name] for t in targets) + " |")
    notes = [f"- {t.label}: {t.error}" for t in targets if t.error]
    return "\n".join(lines + ([""] + notes if notes else []))


# -- main -----------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description="Kylon vs nginx vs LiteLLM vs the direct upstream")
    parser.add_argument("--quick", action="store_true", help="short runs to check the set-up (about 2.5 minutes)")
    parser.add_argument("--duration", type=int, help="seconds per wrk / fixed-rate measurement (whole seconds: wrk's -d)")
    parser.add_argument("--runs", type=int, help="repetitions of each measurement (medians are quoted)")
    parser.add_argument("--connections", default="10,50,200", help="wrk concurrencies")
    parser.add_argument("--rate", type=int, default=500, help="fixed request rate for the added-latency run")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams for first-chunk/total time")
    parser.add_argument("--open-streams", default="500,2000", help="open-stream counts for the memory reading")
    parser.add_argument("--targets", default="direct,kylon,floor,nginx,litellm", help="which targets to run")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--baseline", help="also run Kylon from this checkout (git worktree add /tmp/old <commit>)")
    parser.add_argument("--key-fields", type=json.loads, default={},
                        help='JSON fields of the bench key, e.g. \'{"rpm_limit": 1000000}\' (an older checkout ignores them)')
    parser.add_argument("--profile", action="store_true", help="profile Kylon with py-spy after measuring")
    parser.add_argument("--websockets", action="store_true",
                        help="only the WebSocket benchmark: Gemini Live sessions through Kylon and nginx (bench/sockets.py)")
    parser.add_argument("--sessions", type=int, default=500, help="open WebSocket sessions (--websockets)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, databases)")
    parser.add_argument("--profile-seconds", type=int, default=10, help="seconds per py-spy recording (4 of them)")
    opts = parser.parse_args(argv)
    opts.connections = [int(c) for c in opts.connections.split(",")]
    opts.open_streams = [int(c) for c in opts.open_streams.split(",")]
    opts.targets = [t for t in opts.targets.split(",") if not (opts.no_litellm and t == "litellm")]
    KEY_FIELDS.update(opts.key_fields)
    if opts.quick:
        opts.duration = opts.duration or 2
        opts.runs = opts.runs or 1
        opts.relay_seconds, opts.disconnect_samples, opts.disconnect_timeout, opts.settle = 2, 3, 3, 1
        opts.profile_seconds = min(opts.profile_seconds, 8)
    else:
        opts.duration = opts.duration or 4
        opts.runs = opts.runs or 3
        opts.relay_seconds, opts.disconnect_samples, opts.disconnect_timeout, opts.settle = 3, 5, 5, 2
    opts.stream_chunks, opts.stream_interval_ms = 20, 50
    opts.probes = 10 if opts.quick else 30  # new streams timed while the others are open
    opts.relay_streams = 10
    return opts


def machine():
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"cpus": os.cpu_count(), "loadavg": load, "python": platform.python_version(),
            "kernel": platform.release()}


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every process started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of open streams
    if opts.websockets:
        return websocket_main(opts)
    if hard < 2 * max(opts.open_streams) + 1000:
        log(f"warning: open-file limit {hard} is low for {max(opts.open_streams)} streams")
    ensure_tool("wrk", "wrk")
    os.makedirs(RESULTS, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = tempfile.mkdtemp(prefix="kylon-bench-")
    started = time.monotonic()
    before = machine()
    log(f"workdir {workdir}; machine {before}")
    targets = []
    fake = None
    try:
        fake, fake_url = start_fake(workdir)
        starters = {"kylon": start_kylon, "floor": start_floor, "nginx": start_nginx, "litellm": start_litellm}
        names = list(opts.targets)
        if opts.baseline:
            # An older checkout measured in the same run: "before and after".
            root = os.path.abspath(opts.baseline)
            starters["kylon-before"] = functools.partial(
                start_kylon, root=root, name="kylon-before", label=f"Kylon before ({os.path.basename(root)})")
            names.insert(names.index("kylon") + 1 if "kylon" in names else len(names), "kylon-before")
        for name in names:
            if name == "direct":
                targets.append(direct_target(fake, fake_url))
            elif name in starters:
                try:
                    target = starters[name](fake_url, workdir)
                    target.restart = functools.partial(starters[name], fake_url, workdir)
                    targets.append(target)
                except (RuntimeError, OSError, httpx.HTTPError) as e:
                    failed = Target(name, name)
                    failed.error = f"could not start: {e}"
                    targets.append(failed)
        for target in targets:
            if target.name == "litellm":
                wait_litellm(target)
            asyncio.run(check_target(target))
            log(f"{target.name}: {'ready at ' + target.url if target.available else target.error}")
        if not any(t.name == "direct" and t.available for t in targets):
            raise SystemExit("the direct upstream is needed as the baseline")
        results = measure(targets, fake_url, opts)
        profiles = None
        kylon = next((t for t in targets if t.name == "kylon" and t.available), None)
        if opts.profile and kylon is not None:
            log("profiling Kylon with py-spy")
            profiles = profile_kylon(kylon, opts.profile_seconds, stamp)
    finally:
        for target in targets:
            target.stop()
        if fake is not None:
            fake.stop()
    rows = build_rows(results, targets, opts)
    table = markdown_table(rows, targets)
    after = machine()
    report = {
        "started": stamp,
        "seconds": round(time.monotonic() - started, 1),
        "machine_before": before,
        "machine_after": after,
        "options": {k: v for k, v in vars(opts).items()},
        "targets": {t.name: {"label": t.label, "url": t.url, "error": t.error} for t in targets},
        "results": {name: dict(metrics) for name, metrics in results.items()},
        "profiles": profiles,
        "table": table,
    }
    path = os.path.join(RESULTS, f"bench-{stamp}.json")
    for out in (path, os.path.join(RESULTS, "latest.json")):
        with open(out, "w") as f:
            json.dump(report, f, indent=1, default=str)
    header = (f"{'Quick run' if opts.quick else 'Run'} of {stamp}: {opts.runs} run(s), "
              f"{opts.duration:g} s per point, {before['cpus']} CPUs, load average {' '.join(before['loadavg'])} "
              f"before / {' '.join(after['loadavg'])} after; {report['seconds']:.0f} s in all.")
    text = header + "\n\n" + table + "\n"
    if profiles and "error" not in profiles:
        text += "\n" + profile_text(profiles)
    elif profiles:
        text += f"\nprofile: {profiles['error']}\n"
    with open(os.path.join(RESULTS, "latest.md"), "w") as f:
        f.write(text)
    print(text)
    if opts.keep:
        log(f"results: {path}; logs in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)  # nginx's access log alone grows to hundreds of MB
        log(f"results: {path}")


def websocket_main(opts):
    import sockets  # bench/sockets.py

    os.makedirs(RESULTS, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = tempfile.mkdtemp(prefix="kylon-bench-ws-")
    before = machine()
    results = sockets.benchmark(workdir, sessions=opts.sessions, seconds=opts.duration)
    after = machine()
    table = sockets.markdown(results)
    text = (f"WebSocket run of {stamp}: {opts.sessions} sessions, {opts.duration:g} s of round trips, "
            f"{before['cpus']} CPUs, load average {' '.join(before['loadavg'])} before / "
            f"{' '.join(after['loadavg'])} after.\n\n{table}\n")
    path = os.path.join(RESULTS, f"bench-ws-{stamp}.json")
    with open(path, "w") as f:
        json.dump({"started": stamp, "machine_before": before, "machine_after": after, "results": results,
                   "table": table}, f, indent=1)
    with open(os.path.join(RESULTS, "latest-ws.md"), "w") as f:
        f.write(text)
    print(text)
    shutil.rmtree(workdir, ignore_errors=True)
    log(f"results: {path}")


def profile_text(profiles):
    lines = []
    for kind, p in profiles.items():
        shares = ", ".join(f"{name} {pct}%" for name, pct in p["threads"].items())
        lines.append(f"Kylon profile, {kind}: {p['samples']} busy samples ({shares}); flame graph {p.get('svg', '')}")
        lines.append("  own time (where the sample was taken):")
        lines += [f"    {pct:5.1f}%  {name}" for name, pct in p["own"][:15]]
        lines.append("  Kylon's functions, with what they call:")
        lines += [f"    {pct:5.1f}%  {name}" for name, pct in p["kylon"][:15]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
