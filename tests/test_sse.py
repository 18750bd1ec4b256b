"""The incremental SSE scanner: any chunking of a stream gives the same events."""

from hypothesis import given, strategies as st

from kylon.sse import SSEScanner

STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
    b"data: {\"a\":1}\r\n\r\n"
    b"data: line one\ndata: line two\n\n"
    b"event: ping\r\ndata: {}\r\n\r\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (b"", None),
    (b"message_start", b'{"type":"message_start"}'),
    (b"", b'{"a":1}'),
    (b"", b"line one\nline two"),
    (b"ping", b"{}"),
    (b"", b"[DONE]"),
]


def scan(chunks):
    scanner = SSEScanner()
    events = []
    for chunk in chunks:
        events.extend(scanner.feed(chunk))
    events.extend(scanner.close())
    return events


def test_whole_stream():
    events = scan([STREAM])
    assert [(e.name, e.data) for e in events] == EXPECTED
    assert b"".join(e.raw for e in events) == STREAM


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_events(cuts):
    cuts = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
    events = scan(chunks)
    assert [(e.name, e.data) for e in events] == EXPECTED
    assert b"".join(e.raw for e in events) == STREAM


def test_last_event_without_blank_line_comes_out_at_close():
    # Gemini's streams end when the connection closes.
    scanner = SSEScanner()
    assert scanner.feed(b'data: {"x":1}\n\ndata: {"last":true}\n') != []
    assert [e.data for e in scanner.close()] == [b'{"last":true}']


def test_only_the_unfinished_tail_is_kept():
    scanner = SSEScanner()
    for _ in range(1000):
        scanner.feed(b'data: {"chunk": "' + b"x" * 100 + b'"}\n\n')
    assert scanner.pending == 0
    scanner.feed(b"data: partial")
    assert scanner.pending == len(b"data: partial")


def test_field_without_space_and_unknown_fields():
    events = scan([b"data:nospace\nid: 7\nretry: 100\n\n"])
    assert events[0].data == b"nospace"
