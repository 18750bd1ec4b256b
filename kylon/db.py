"""All database work runs on one worker thread, never on the IOLoop.

`DatabaseWorker.run(fn, *args)` returns an awaitable; the function runs inside a
connection on the worker thread. One thread keeps SQLite's single writer happy,
and gives the key cache and the usage writer a simple order of events: a
refresh and a flush never interleave.
"""

import asyncio
import concurrent.futures
import functools
import logging

log = logging.getLogger("kylon.db")


class DatabaseWorker:
    def __init__(self, database):
        self.database = database
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kylon-db")

    def _call(self, fn, args, kwargs):
        db = self.database
        if db.is_closed():
            db.connect(reuse_if_open=True)
        try:
            return fn(*args, **kwargs)
        except Exception:
            # A broken connection (MariaDB restarted, network) must not stick:
            # the next call reconnects.
            try:
                if not db.in_transaction():
                    db.close()
            except Exception:
                pass
            raise

    def run(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.executor, functools.partial(self._call, fn, args, kwargs))

    def run_sync(self, fn, *args, **kwargs):
        """For start-up and shutdown, when no request is being served."""
        return self.executor.submit(self._call, fn, args, kwargs).result()

    def close(self):
        self.executor.submit(self.database.close).result()
        self.executor.shutdown(wait=True)


def repeat(seconds, refresh, what):
    """A task running `await refresh()` every `seconds` until cancelled; a
    failure is logged and tried again next time (the database may be away
    for a while)."""

    async def loop():
        while True:
            await asyncio.sleep(seconds)
            try:
                await refresh()
            except Exception as e:
                log.warning("%s failed: %s", what, e)

    return asyncio.ensure_future(loop())
