"""Runs Kylon as users do (`python app.py`) in a subprocess, with its output
kept in a log file, and offers the admin API calls tests need."""

import os
import signal
import ssl
import subprocess
import sys
import time
import uuid

import httpx

from .fakes.server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_TOKEN = "kat_test_admin_token_" + uuid.uuid4().hex
LOG_DIR = os.path.join(ROOT, "test-artifacts", "logs")
# Every Kylon log and every agent key of this test session (conftest checks
# at the end that no key or credential ever reached a log line).
LOG_PATHS = set()
CREATED_KEYS = {ADMIN_TOKEN}


class Kylon:
    def __init__(self, database_url, env=None, name="kylon"):
        os.makedirs(LOG_DIR, exist_ok=True)
        self.port = free_port()
        # With KYLON_TLS_CERT_FILE Kylon serves HTTPS; its certificate is the one trusted.
        cert = (env or {}).get("KYLON_TLS_CERT_FILE")
        self.verify = ssl.create_default_context(cafile=cert) if cert else True
        self.url = f"{'https' if cert else 'http'}://127.0.0.1:{self.port}"
        self.database_url = database_url
        # Ports come round again: each instance has a log of its own (its
        # restarts append to it), all of them checked for secrets at the end.
        self.log_path = os.path.join(LOG_DIR, f"{name}-{self.port}-{uuid.uuid4().hex[:8]}.log")
        LOG_PATHS.add(self.log_path)
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": ROOT,
            "KYLON_PORT": str(self.port),
            "KYLON_DATABASE_URL": database_url,
            "KYLON_ADMIN_TOKEN": ADMIN_TOKEN,
            "KYLON_USAGE_FLUSH_SECONDS": "0.05",
            "KYLON_CACHE_REFRESH_SECONDS": "0.5",
            # Every test client is 127.0.0.1: only the hostile-input tests
            # keep the production default (10).
            "KYLON_BAD_KEY_FREE_FAILURES": "100000",
            "KYLON_JOURNAL_DIR": os.path.join(ROOT, "test-artifacts", "journal", f"{name}-{self.port}"),
            **(env or {}),
        }
        self.start()

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "app.py")],
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Kylon exited at start:\n{self.read_log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Kylon did not start:\n{self.read_log()}")

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    # -- admin API ------------------------------------------------------------
    def admin(self, method, path, **kwargs):
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return httpx.request(method, self.url + "/admin/api" + path, headers=headers, timeout=10, verify=self.verify,
                             **kwargs)

    def create_agent(self, credits="100", skills=(), name=None):
        r = self.admin("POST", "/agents", json={"name": name or f"agent-{uuid.uuid4().hex[:6]}",
                                                 "skills": list(skills), "credits": credits})
        assert r.status_code == 201, r.text
        return r.json()

    def create_key(self, agent_id, name="test key", **extra):
        r = self.admin("POST", f"/agents/{agent_id}/keys", json={"name": name, **extra})
        assert r.status_code == 201, r.text
        CREATED_KEYS.add(r.json()["key"])
        return r.json()

    def agent_with_key(self, credits="100", skills=()):
        agent = self.create_agent(credits, skills)
        key = self.create_key(agent["id"])
        return agent, key["key"]

    def bad_key(self, problem):
        """A key that must be refused: "missing" (empty), "unknown", "revoked" or "expired"."""
        if problem == "missing":
            return ""
        if problem == "unknown":
            return "pak_" + "x" * 43
        agent = self.create_agent("10")
        if problem == "expired":
            return self.create_key(agent["id"], expires_at="2020-01-01T00:00:00Z")["key"]
        created = self.create_key(agent["id"])
        assert self.admin("DELETE", f"/keys/{created['id']}").status_code == 200
        return created["key"]

    def balance(self, agent_id):
        r = self.admin("GET", f"/agents/{agent_id}")
        assert r.status_code == 200, r.text
        from decimal import Decimal

        return Decimal(r.json()["credits"])

    def usage(self, request_id, timeout=10):
        """The usage record of one call, waiting for the batch writer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.admin("GET", "/usage", params={"request_id": request_id})
            data = r.json()["data"]
            if data:
                return data[0]
            time.sleep(0.05)
        raise AssertionError(f"no usage record for {request_id}")

    def usage_for_agent(self, agent_id, count, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.admin("GET", "/usage", params={"agent_id": agent_id, "limit": 1000}).json()["data"]
            if len(data) >= count:
                return data
            time.sleep(0.05)
        raise AssertionError(f"expected {count} usage records for agent {agent_id}, found {len(data)}")
