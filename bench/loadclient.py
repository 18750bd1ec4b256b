"""The benchmark's own asyncio HTTP/1.1 client, for what wrk cannot do: a
fixed request rate (wrk2 is not in Debian), streams (time to first chunk,
total time, chunks per second), many open streams at once, and client
disconnects. Raw sockets and a minimal response parser keep its own cost low.
"""

import asyncio
import json
import time
from urllib.parse import urlsplit


class Endpoint:
    """Where requests go: host, port, path, and the headers every request carries."""

    def __init__(self, url, headers=None):
        parts = urlsplit(url)
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.headers = dict(headers or {})

    def request(self, payload):
        body = json.dumps(payload, separators=(",", ":")).encode()
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: */*",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def connect(self):
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)


async def read_response(reader):
    """One whole response on a keep-alive connection → (status, body bytes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
        return status, b"".join(parts)
    if length is not None:
        return status, await reader.readexactly(length)
    return status, await reader.read()


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- fixed rate -------------------------------------------------------------------
async def fixed_rate(endpoint, payload, rate, duration, max_connections=512, grace=5):
    """Sends `rate` requests a second for `duration` seconds on a pool of
    keep-alive connections. Latency counts from each request's scheduled time
    (no coordinated omission: a slow answer delays the ones queued behind it)."""
    request = endpoint.request(payload)
    idle = []
    opened = 0
    latencies = []
    errors = 0
    slots = asyncio.Semaphore(max_connections)

    async def one(scheduled):
        nonlocal opened, errors
        async with slots:
            if idle:
                reader, writer = idle.pop()
            else:
                reader, writer = await endpoint.connect()
                opened += 1
            try:
                writer.write(request)
                status, body = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer.close()
                return
            except asyncio.CancelledError:
                writer.close()  # given up on (see grace below)
                raise
            latencies.append(time.monotonic() - scheduled)
            if status != 200 or b'"usage"' not in body:
                errors += 1
            idle.append((reader, writer))

    total = int(rate * duration)
    start = time.monotonic() + 0.05
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    # A target that cannot keep up gets `grace` seconds to drain its backlog;
    # what is still unanswered then is counted, not waited for.
    done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.monotonic() - start
    for _, writer in idle:
        writer.close()
    ms = [x * 1000 for x in latencies]
    return {
        "requests": total,
        "completed": len(latencies),
        "unanswered": len(pending),
        "errors": errors + len(pending),
        "achieved_rps": len(latencies) / elapsed,
        "connections": opened,
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
    }


# -- streams -----------------------------------------------------------------------
class Stream:
    """One streamed call on its own connection."""

    def __init__(self, endpoint, payload):
        self.endpoint = endpoint
        self.payload = payload
        self.reader = None
        self.writer = None
        self.status = None
        self.started = None
        self.first_chunk_at = None
        self.done_at = None
        self.chunks = 0
        self.error = None

    async def open(self):
        """Sends the request and reads until the first SSE data arrives."""
        self.started = time.monotonic()
        self.reader, self.writer = await self.endpoint.connect()
        self.writer.write(self.endpoint.request(self.payload))
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        if self.status != 200:
            raise RuntimeError(f"status {self.status}: {(await self.reader.read(500))!r}")
        self.tail = b""
        while self.first_chunk_at is None:
            if not await self._read():
                raise RuntimeError("stream ended before its first chunk")

    async def _read(self):
        data = await self.reader.read(1 << 16)
        if not data:
            return False
        # Count SSE data lines in the raw bytes (HTTP chunk-size lines never
        # contain "data: "); keep a short tail for a marker split between reads.
        window = self.tail + data
        found = window.count(b"data: ")
        if found and self.first_chunk_at is None:
            self.first_chunk_at = time.monotonic()
        self.chunks += found
        if self.done_at is None and b"[DONE]" in window:
            self.done_at = time.monotonic()
        self.tail = window[-5:]  # too short to hold a whole marker: nothing counted twice
        return True

    async def read_to_end(self):
        while self.done_at is None:
            if not await self._read():
                raise RuntimeError("stream ended without [DONE]")

    def close(self):
        if self.writer is not None:
            self.writer.close()


async def run_stream(endpoint, payload, timeout=None):
    """One stream read to its end; a stream not done within `timeout` seconds
    (None: no limit) is given up with an error."""
    stream = Stream(endpoint, payload)

    async def whole():
        await stream.open()
        await stream.read_to_end()

    try:
        await asyncio.wait_for(whole(), timeout)
    except asyncio.TimeoutError:
        stream.error = f"not done within {timeout} s"
    except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as e:
        stream.error = str(e) or type(e).__name__
    finally:
        stream.close()
    return stream


async def concurrent_streams(endpoint, payload, count):
    """`count` streams started together: time to first chunk and total time."""
    streams = await asyncio.gather(*(run_stream(endpoint, payload) for _ in range(count)))
    good = [s for s in streams if s.error is None]
    ttfc = [(s.first_chunk_at - s.started) * 1000 for s in good]
    total = [(s.done_at - s.started) * 1000 for s in good]
    return {
        "streams": count,
        "errors": count - len(good),
        "error_sample": next((s.error for s in streams if s.error), None),
        "ttfc_p50_ms": percentile(ttfc, 50),
        "ttfc_p99_ms": percentile(ttfc, 99),
        "total_p50_ms": percentile(total, 50),
        "total_p99_ms": percentile(total, 99),
    }


async def one_at_a_time(endpoint, payload, count, spacing, timeout=10):
    """`count` streams started one after the other, `spacing` seconds apart
    (each read to its end first): time to first chunk of a stream that meets a
    target with nothing else starting, whatever else it holds open. A stream
    not done within `timeout` seconds ends the series (a target that cannot
    start new streams would only make us wait)."""
    streams = []
    for _ in range(count):
        streams.append(await run_stream(endpoint, payload, timeout))
        if streams[-1].error:
            break
        await asyncio.sleep(spacing)
    ttfc = [(s.first_chunk_at - s.started) * 1000 for s in streams if s.error is None]
    return {
        "errors": sum(1 for s in streams if s.error) + count - len(streams),
        "error_sample": next((s.error for s in streams if s.error), None),
        "ttfc_p50_ms": percentile(ttfc, 50),
        "ttfc_p99_ms": percentile(ttfc, 99),
    }


async def relay_throughput(endpoint, payload, count, timeout=120):
    """`count` streams at once, each sent by the upstream as fast as the
    connection takes it and read to its end: SSE chunks per second delivered."""
    start = time.monotonic()
    try:
        streams = await asyncio.wait_for(
            asyncio.gather(*(run_stream(endpoint, payload) for _ in range(count))), timeout
        )
    except asyncio.TimeoutError:
        return {"streams": count, "errors": count, "error_sample": f"not done within {timeout} s",
                "chunks": 0, "seconds": timeout, "chunks_per_s": None}
    elapsed = time.monotonic() - start
    errors = [s.error for s in streams if s.error]
    chunks = sum(s.chunks for s in streams)
    return {
        "streams": count,
        "errors": len(errors),
        "error_sample": errors[0] if errors else None,
        "chunks": chunks,
        "seconds": elapsed,
        "chunks_per_s": chunks / elapsed,
    }


async def open_streams(endpoint, payload_for, count, parallel=100, timeout=10):
    """Opens `count` streams that stay open (the upstream holds them), `parallel`
    at a time; a stream is open once its first chunk has arrived. A stream not
    open within `timeout` seconds fails, and after a failure no more are tried
    (a proxy that queues streams beyond a limit would only make us wait).
    → (open streams, failure messages, streams not tried)."""
    slots = asyncio.Semaphore(parallel)
    streams = []
    failures = []

    async def one(i):
        async with slots:
            if failures:
                return
            stream = Stream(endpoint, payload_for(i))
            try:
                await asyncio.wait_for(stream.open(), timeout)
                streams.append(stream)
            except asyncio.TimeoutError:
                failures.append(f"no first chunk within {timeout} s")
                stream.close()
            except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as e:
                failures.append(str(e) or type(e).__name__)
                stream.close()

    await asyncio.gather(*(one(i) for i in range(count)))
    return streams, failures, count - len(streams) - len(failures)


async def disconnect_delay(endpoint, payload, closed_url_for, watch_id, timeout):
    """Opens a stream, closes the client side after its first chunk, and asks
    the fake upstream when its end of the connection closed. → seconds, or None
    when the upstream connection was still open after `timeout`."""
    stream = Stream(endpoint, payload)
    try:
        await asyncio.wait_for(stream.open(), 30)
    except BaseException:
        stream.close()
        raise
    closed_here = time.monotonic()
    stream.writer.close()
    probe = Endpoint(closed_url_for(watch_id))
    deadline = closed_here + timeout
    while time.monotonic() < deadline:
        reader, writer = await probe.connect()
        writer.write(f"GET {probe.path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        _, body = await read_response(reader)
        writer.close()
        closed_at = json.loads(body)["closed_at"]
        if closed_at is not None:
            return max(0.0, closed_at - closed_here)
        await asyncio.sleep(0.01)
    return None
