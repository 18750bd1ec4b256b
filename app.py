"""Kylon: a model gateway for AI agents. `python app.py` runs it.

This file only wires things together: settings → database → caches and usage
writer → the handler lists of kylon/handlers → the HTTP server, plus a clean
shutdown on SIGTERM/SIGINT.
"""

import argparse
import asyncio
import gc
import logging
import os
import re
import resource
import secrets
import signal
import ssl
import sys

from kylon import relay
from kylon.accesslog import LOG_FORMAT, AccessLog
from kylon.application import KylonApplication
from kylon.auth import AccountCache
from kylon.billing import PriceBook
from kylon.credits import Balances
from kylon.db import DatabaseWorker, repeat
from kylon.handlers import NotFoundHandler, admin_pages, default_handlers
from kylon.gates import seed_gates
from kylon.handlers.admin_api import token_hash
from kylon.models import Setting, open_database
from kylon.providers import load_providers, secret_query_params
from kylon.server import KylonHTTPServer
from kylon.services import Services
from kylon.settings import Settings
from kylon.throttle import FailureThrottle
from kylon.journal import Journal
from kylon.usage import UsageWriter

HERE = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("kylon")

def ensure_admin_token(configured):
    """The admin token's hash; a new token (to print once) when none exists yet."""
    if configured:
        digest = token_hash(configured)
        Setting.insert(name="admin_token_hash", value=digest).on_conflict_replace().execute()
        return digest, None
    row = Setting.get_or_none(Setting.name == "admin_token_hash")
    if row is not None:
        return row.value, None
    token = "kat_" + secrets.token_urlsafe(32)
    Setting.create(name="admin_token_hash", value=token_hash(token))
    return token_hash(token), token


def ensure_cookie_secret():
    row = Setting.get_or_none(Setting.name == "cookie_secret")
    if row is None:
        row = Setting.create(name="cookie_secret", value=secrets.token_urlsafe(48))
    return row.value


def make_app(services, cookie_secret):
    return KylonApplication(
        default_handlers(services.providers),
        default_handler_class=NotFoundHandler,
        kylon=services,
        log_function=services.access_log,
        template_path=os.path.join(HERE, "templates"),
        jinja_env=admin_pages.template_environment(os.path.join(HERE, "templates")),
        static_path=os.path.join(HERE, "static"),
        cookie_secret=cookie_secret,
        xsrf_cookies=True,
        compress_response=False,
    )


def raise_open_file_limit():
    """Each open stream holds a client socket and an upstream one (and a copy
    of it, for cancelling): a default soft limit of 1024 would cap Kylon near
    300 streams, so take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit above %d", soft)


def tls_context(settings):
    """An SSL context when Kylon serves HTTPS itself (KYLON_TLS_CERT_FILE), else None."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
    return context


async def serve(settings):
    raise_open_file_limit()
    providers = load_providers(settings.env)
    db = open_database(settings.database_url)
    worker = DatabaseWorker(db)
    admin_hash, new_token = worker.run_sync(ensure_admin_token, settings.admin_token)
    cookie_secret = worker.run_sync(ensure_cookie_secret)
    worker.run_sync(seed_gates, providers)
    if new_token:
        print(f"Kylon admin token (shown once, keep it safe): {new_token}", flush=True)

    pricebook = PriceBook(
        defaults={p.name: p.prices for p in providers.values()},
        fallbacks={p.name: p.fallback_price for p in providers.values()},
    )
    balances = Balances()
    await pricebook.reload(worker)
    journal_name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"usage-{settings.host}-{settings.port}")
    writer = UsageWriter(worker, balances, settings.usage_flush_seconds, Journal(settings.journal_dir, journal_name))
    # Before the balances are read: they include what the replay debits.
    writer.replay_journal(pricebook)
    cache = AccountCache(worker, balances, settings.cache_refresh_seconds)
    await cache.refresh()
    services = Services(settings, worker, cache, balances, writer, providers, pricebook, admin_hash)
    services.access_log = AccessLog(secret_params=secret_query_params(providers))
    services.bad_keys = FailureThrottle(free=settings.bad_key_free_failures, base_delay=0.05, max_delay=5.0,
                                        forget_after=300)
    relay.configure_client(settings.max_upstream_connections)

    app = make_app(services, cookie_secret)
    server = KylonHTTPServer(
        app,
        ssl_options=tls_context(settings),
        xheaders=settings.xheaders,
        max_body_size=settings.max_body_bytes,
        client_idle_timeout=settings.client_idle_timeout,
        client_body_timeout=settings.client_body_timeout,
    )
    server.listen(settings.port, settings.host)
    cache.start()
    # Other processes' price changes: the admin handlers reload at once after their own.
    prices_task = repeat(settings.cache_refresh_seconds, lambda: pricebook.reload(worker), "price reload")
    writer.start()
    # Everything made at start lives as long as the process: keep the cyclic
    # GC from walking it again and again (its full passes are latency spikes).
    gc.collect()
    gc.freeze()
    configured = ", ".join(p.name for p in providers.values() if p.configured) or "none"
    log.info("Kylon listening on %s://%s:%d (providers configured: %s; event loop %s)",
             "https" if settings.tls_cert_file else "http", settings.host,
             settings.port, configured, type(asyncio.get_running_loop()).__module__.split(".")[0])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    prices_task.cancel()
    await shutdown(server, services)


async def shutdown(server, services):
    """Stop accepting, let open calls finish within the grace period, cut the
    rest (recorded as interrupted), write every usage record, close."""
    log.info("shutting down: %d calls open", len(services.open_calls))
    server.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + services.settings.shutdown_grace_seconds
    while services.open_calls and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for handler in list(services.open_calls):
        handler.interrupt()
    for _ in range(40):
        if not services.open_calls:
            break
        await asyncio.sleep(0.05)
    services.cache.stop()
    written = await services.writer.close()
    services.db.close()
    services.access_log.flush()
    log.info("stopped%s", "" if written else " (some usage records could not be written)")


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Kylon model gateway")
    parser.add_argument("--host", help="listen address (KYLON_HOST)")
    parser.add_argument("--port", type=int, help="listen port (KYLON_PORT)")
    parser.add_argument("--database-url", help="peewee database URL (KYLON_DATABASE_URL)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    if args.database_url:
        settings.database_url = args.database_url
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    run_loop(serve(settings), settings.event_loop)


def run_loop(main_coroutine, name):
    """Tornado runs on any asyncio loop. uvloop (libuv) does the loop's own
    work (ready callbacks, timers, epoll) in C; "asyncio" is the standard one."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("KYLON_EVENT_LOOP=uvloop but uvloop is not installed: using asyncio's loop")
        else:
            return uvloop.run(main_coroutine)
    return asyncio.run(main_coroutine)


if __name__ == "__main__":
    main()
