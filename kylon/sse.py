"""An incremental scanner for Server-Sent Events.

Bytes go in as they arrive from upstream, in chunks of any size; complete events
come out, each with its raw bytes (so a relay can pass it on untouched or drop
it), its event name and its data. Only the unfinished tail is kept between
chunks, never the whole stream.
"""

import re

# An event ends at a blank line; the spec allows \n, \r\n and \r line endings.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\n\r\n|\r\n\n")
_LINE_SPLIT = re.compile(rb"\r\n|\n|\r")


class Event:
    __slots__ = ("raw", "name", "data")

    def __init__(self, raw, name, data):
        self.raw = raw
        self.name = name  # bytes; b"" when the event has no `event:` line
        self.data = data  # bytes: the data lines joined with "\n"; None: comments only

    def __repr__(self):
        return f"Event({self.name!r}, {self.data!r})"


def parse_event(block):
    name = b""
    data = None
    for line in _LINE_SPLIT.split(block):
        if not line or line[0:1] == b":":
            continue
        colon = line.find(b":")
        if colon < 0:
            key, value = line, b""
        else:
            key, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if key == b"data":
            data = value if data is None else data + b"\n" + value
        elif key == b"event":
            name = value
    return name, data


class SSEScanner:
    def __init__(self):
        self._tail = b""

    def feed(self, chunk):
        """Complete events found in what has arrived so far."""
        buf = self._tail + chunk if self._tail else chunk
        events = []
        pos = 0
        while True:
            m = _EVENT_END.search(buf, pos)
            if m is None:
                break
            block = buf[pos : m.start()]
            name, data = parse_event(block)
            events.append(Event(buf[pos : m.end()], name, data))
            pos = m.end()
        self._tail = buf[pos:]
        return events

    def close(self):
        """At the end of the stream: the last event, if it lacked its blank line."""
        tail, self._tail = self._tail, b""
        if not tail.strip():
            return []
        name, data = parse_event(tail)
        return [Event(tail, name, data)]

    @property
    def pending(self):
        return len(self._tail)
