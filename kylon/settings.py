"""Kylon's configuration: environment variables (and `app.py` flags) → one Settings object.

Provider credentials and base URLs are not listed here one by one: each provider
module names its own variables, and reads them from `Settings.env`.
"""

import os
from dataclasses import dataclass, field


def _int(env, name, default):
    return int(env.get(name) or default)


def _float(env, name, default):
    return float(env.get(name) or default)


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = "sqlite:///kylon.db"
    admin_token: str | None = None
    # Largest request body Kylon accepts (413 beyond it, refused before it is read).
    max_body_bytes: int = 64 * 1024 * 1024
    # Upstream time-outs: connecting, waiting for the response headers, and the
    # longest silence inside a response body (streams can legitimately idle).
    connect_timeout: float = 10.0
    first_byte_timeout: float = 600.0
    idle_timeout: float = 600.0
    # Clients: longest wait for request headers (and between keep-alive
    # requests), and for a whole request body.
    client_idle_timeout: float = 60.0
    client_body_timeout: float = 300.0
    # Most upstream transfers open at once (curl handles).
    max_upstream_connections: int = 2500
    # How often known keys, skills, balances and prices are re-read from the
    # database: the bound on how long another process's change takes to apply here.
    cache_refresh_seconds: float = 2.0
    # Usage records are written in batches: at most this long after the call ends.
    usage_flush_seconds: float = 0.25
    # SIGTERM: how long open streams may run on before they are cut.
    shutdown_grace_seconds: float = 30.0
    # Local journal of usage records not yet committed (replayed at start).
    journal_dir: str = "kylon-journal"
    # Bad keys one client address may send before its answers slow down.
    bad_key_free_failures: int = 10
    # Forwarded client addresses are trusted only from these proxies (nginx).
    xheaders: bool = False
    # Serve HTTPS (and wss://) with this certificate chain and key, both PEM
    # files: google-genai's Live API always connects with wss://.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The asyncio loop under Tornado: "uvloop" (default) or "asyncio".
    event_loop: str = "uvloop"
    env: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ=None):
        env = dict(os.environ if environ is None else environ)
        return cls(
            host=env.get("KYLON_HOST") or "127.0.0.1",
            port=_int(env, "KYLON_PORT", 8080),
            database_url=env.get("KYLON_DATABASE_URL") or "sqlite:///kylon.db",
            admin_token=env.get("KYLON_ADMIN_TOKEN") or None,
            max_body_bytes=_int(env, "KYLON_MAX_BODY_BYTES", 64 * 1024 * 1024),
            connect_timeout=_float(env, "KYLON_CONNECT_TIMEOUT", 10),
            first_byte_timeout=_float(env, "KYLON_UPSTREAM_TIMEOUT", 600),
            idle_timeout=_float(env, "KYLON_IDLE_TIMEOUT", 600),
            client_idle_timeout=_float(env, "KYLON_CLIENT_IDLE_TIMEOUT", 60),
            client_body_timeout=_float(env, "KYLON_CLIENT_BODY_TIMEOUT", 300),
            max_upstream_connections=_int(env, "KYLON_MAX_UPSTREAM_CONNECTIONS", 2500),
            cache_refresh_seconds=_float(env, "KYLON_CACHE_REFRESH_SECONDS", 2),
            usage_flush_seconds=_float(env, "KYLON_USAGE_FLUSH_SECONDS", 0.25),
            shutdown_grace_seconds=_float(env, "KYLON_SHUTDOWN_GRACE_SECONDS", 30),
            journal_dir=env.get("KYLON_JOURNAL_DIR") or "kylon-journal",
            bad_key_free_failures=_int(env, "KYLON_BAD_KEY_FREE_FAILURES", 10),
            xheaders=(env.get("KYLON_TRUST_PROXY_HEADERS", "").lower() in ("1", "true", "yes")),
            tls_cert_file=env.get("KYLON_TLS_CERT_FILE") or "",
            tls_key_file=env.get("KYLON_TLS_KEY_FILE") or "",
            event_loop=(env.get("KYLON_EVENT_LOOP") or "uvloop").lower(),
            env=env,
        )
