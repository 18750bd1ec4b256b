"""The local journal: what a SIGKILL must not lose, in files of JSON lines.

Two kinds of file, named after the process (`usage-<host>-<port>`), so that
processes sharing one database each replay only their own:

- record segments `<prefix>-<n>.jsonl`: each final usage record, appended
  before the answer's last bytes go out; a segment is deleted once the batch
  holding its records is committed (`Journal`).
- open-call files `<prefix>.open-<n>.jsonl`: an "open" line per admitted
  call, written before anything goes upstream, and "progress" lines (the
  usage so far) of the calls still running, at most one a second a call
  (`OpenCalls`). A call's final record closes it. These files do not follow
  the record segments' rotation: a call may run for minutes over many
  batches. When a file holds mostly closed calls it is compacted: the open
  calls' lines go to a new file, then the old one is deleted.

Every write is one `os.write` to the page cache (no fsync): a killed process's
lines survive, a machine crash is what the database commit is for. At start,
a call opened but never closed is recorded `interrupted` from its last
progress (kylon/calls/recovery.py); records are keyed by request id, so one
already written is skipped, and nothing is billed twice.
"""

import datetime
import glob
import json
import logging
import os
from decimal import Decimal

log = logging.getLogger("kylon.journal")

# A compaction once the current open-call file has this many lines more than
# twice the calls still open: its cost stays a small fraction of the writes.
COMPACT_AFTER = 10_000


def _encode(value):
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if isinstance(value, datetime.datetime):
        return {"$t": value.isoformat()}
    raise TypeError(value)


def _decode(obj):
    if "$d" in obj:
        return Decimal(obj["$d"])
    if "$t" in obj:
        return datetime.datetime.fromisoformat(obj["$t"])
    return obj


# One encoder for every line (json.dumps with a `default` builds a new one
# each call); no spaces after separators.
_JOURNAL_ENCODER = json.JSONEncoder(default=_encode, separators=(",", ":"))
# The C encoder JSONEncoder.encode makes anew for each call, made once (two
# lines a call: a third less time each). No circular check: lines are flat.
_C_ENCODER = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, _encode, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
)


def encode_line(obj):
    if _C_ENCODER is None:
        return _JOURNAL_ENCODER.encode(obj).encode() + b"\n"
    return ("".join(_C_ENCODER(obj, 0)) + "\n").encode()


def file_number(path):
    return int(path.rsplit("-", 1)[1].split(".")[0])


def numbered_files(pattern):
    """The files matching `pattern`, oldest (lowest number) first."""
    return sorted(glob.glob(pattern), key=file_number)


def read_lines(paths):
    """Every JSON line of `paths` in order (a torn last line is skipped)."""
    entries = []
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                try:
                    entries.append(json.loads(line, object_hook=_decode))
                except ValueError:
                    log.warning("skipping a torn journal line in %s", path)
    return entries


def remove(paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class Journal:
    """Append-only record segments `<prefix>-<n>.jsonl`, one record a line,
    and the process's open calls (`calls`)."""

    def __init__(self, directory, name):
        os.makedirs(directory, exist_ok=True)
        self.prefix = os.path.join(directory, name)
        self.number = 1 + max((file_number(p) for p in self.segments()), default=0)
        self.fd = None
        self.path = None
        # Segments whose records are pending but not yet committed.
        self.unflushed = []
        self.calls = OpenCalls(self.prefix)

    def segments(self):
        return numbered_files(glob.escape(self.prefix) + "-*.jsonl")

    def read_all(self):
        """Every record of the segments left by an earlier run."""
        return read_lines(self.segments())

    def append(self, record):
        if self.fd is None:
            self.path = f"{self.prefix}-{self.number}.jsonl"
            self.number += 1
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(self.fd, encode_line(record))

    def rotate(self):
        """Close the current segment; its records are the batch being flushed."""
        if self.fd is not None:
            os.close(self.fd)
            self.unflushed.append(self.path)
            self.fd = None
        segments, self.unflushed = self.unflushed, []
        return segments

    def committed(self, segments):
        remove(segments)

    def failed(self, segments):
        self.unflushed[:0] = segments

    def remove_all(self):
        """After a replay is committed: every segment and open-call file."""
        remove(self.segments())
        self.calls.remove_files()


class OpenCalls:
    """The open-call files of one process, and its calls open in them
    (`live`: request id → calls.record.CallState)."""

    def __init__(self, prefix):
        self.pattern = glob.escape(prefix) + ".open-*.jsonl"
        self.prefix = prefix
        self.number = 1 + max((file_number(p) for p in self.files()), default=0)
        self.fd = None
        self.path = None
        self.lines = 0  # lines in the current file
        self.live = {}

    def files(self):
        return numbered_files(self.pattern)

    def _write(self, data, lines):
        if self.fd is None:
            self.path = f"{self.prefix}.open-{self.number}.jsonl"
            self.number += 1
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(self.fd, data)
        self.lines += lines

    def open(self, call, entry):
        """An admitted call, before it goes upstream: `entry` is everything
        its record needs (see calls.recovery.open_entry)."""
        call.journal_line = line = encode_line(entry)
        self.live[call.request_id] = call
        self._write(line, 1)

    def answered(self, call, entry):
        """A progress line written at once, the call's last: the whole answer is going out."""
        call.answered = True
        call.progress_line = line = encode_line(entry)
        self._write(line, 1)

    def close(self, request_id):
        """Its final record is journaled: nothing more to write for it."""
        self.live.pop(request_id, None)

    def checkpoint(self, progress_of):
        """Once a second: a progress line for each open call whose progress
        changed, all in one write. `progress_of(call)` is (key, entry): a
        cheap comparable key, and a function making the line's entry."""
        lines = []
        for call in self.live.values():
            if call.answered:
                continue
            key, entry = progress_of(call)
            if key != call.progress:
                call.progress = key
                call.progress_line = line = encode_line(entry())
                lines.append(line)
        if self.lines > COMPACT_AFTER + 2 * len(self.live):
            self.compact()
        elif lines:
            self._write(b"".join(lines), len(lines))

    def compact(self):
        """A new file with the open calls' latest lines, then the old one
        deleted: killed in between, both are read, and the newer wins."""
        old = self.path
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.lines = 0
        calls = list(self.live.values())
        if calls:
            self._write(b"".join(c.journal_line + c.progress_line for c in calls), 2 * len(calls))
        if old is not None:
            remove([old])

    def read(self):
        """{request id: (open entry, its last progress entry or None)} of the
        files left by an earlier run, in the order the calls were opened."""
        found = {}
        for entry in read_lines(self.files()):
            if isinstance(entry, list) and entry[:1] == ["open"]:
                previous = found.get(entry[1])
                found[entry[1]] = (entry, previous[1] if previous else None)
            elif isinstance(entry, dict) and entry.get("progress") in found:
                found[entry["progress"]] = (found[entry["progress"]][0], entry)
        return found

    def remove_files(self):
        """At start once recovered, or at a clean stop with no call open."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.path = None
        self.lines = 0
        remove(self.files())
