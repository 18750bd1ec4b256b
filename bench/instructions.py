"""Instructions per proxied call: Kylon under valgrind's callgrind.

Seconds on a shared machine vary by a tenth or more from one run to the next;
instruction counts vary by about 1 % (the database thread's batches and cache
refreshes fall differently into the window). So this is how a change to the
per-call path is judged: run it for the checkout before and after the change,
in one go, a few times; a difference under 2 % is no difference.

Each checkout's Kylon starts under callgrind with instrumentation off, serves
a warm-up on one keep-alive connection, then instrumentation is switched on
for `--calls` plain (non-streamed) chat completions one after the other and
the half second after them (so the batch writer's work is counted too), and
the total of all threads is divided by the number of calls.

Run: python bench/instructions.py [--calls 200] [CHECKOUT ...]   (default: this one)
A checkout of an older commit: git worktree add /tmp/old <commit>.
"""

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import run  # bench/run.py: the fake upstream and Kylon's start-up
import loadclient


async def sequential_calls(target, count):
    reader, writer = await target.endpoint.connect()
    try:
        for _ in range(count):
            writer.write(target.endpoint.request(run.chat("bench")))
            status, body = await loadclient.read_response(reader)
            if status != 200:
                raise RuntimeError(f"answered {status}: {body[:200]!r}")
    finally:
        writer.close()


def instructions_per_call(checkout, fake_url, workdir, calls):
    out = os.path.join(workdir, f"callgrind-{len(os.listdir(workdir))}.out")
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    target = run.start_kylon(fake_url, workdir, root=checkout, prefix=prefix, startup_seconds=600)
    try:
        asyncio.run(sequential_calls(target, 50))  # warm-up: caches filled, code paths taken once
        time.sleep(1)
        pid = str(target.process.pid)
        subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
        asyncio.run(sequential_calls(target, calls))
        time.sleep(0.5)  # the usage batch of these calls is written
        subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
    finally:
        target.stop()
    total = 0
    for path in glob.glob(out + "*"):
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("totals:"):
                    total += int(line.split()[1])
    return total / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkouts", nargs="*", default=[run.ROOT])
    parser.add_argument("--calls", type=int, default=200)
    opts = parser.parse_args()
    run.ensure_tool("valgrind", "valgrind")
    workdir = tempfile.mkdtemp(prefix="kylon-callgrind-")
    fake, fake_url = run.start_fake(workdir)
    try:
        for checkout in opts.checkouts:
            per_call = instructions_per_call(os.path.abspath(checkout), fake_url, workdir, opts.calls)
            print(f"{checkout}: {per_call / 1e6:.3f} M instructions per call ({opts.calls} calls)", flush=True)
    finally:
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
