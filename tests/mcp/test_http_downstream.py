"""The proxy's own reading of a Streamable HTTP server's event streams."""

from __future__ import annotations

import pytest

from aegis.mcp.http_downstream import SseReader

STREAM = (
    b": a keep-alive comment\r\n"
    b"id: 1\r\nretry: 250\r\ndata: \r\n\r\n"  # a priming event: an id, no message
    b'event: message\r\nid: 2\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
    b"event: other\ndata: ignored\n\n"
    b'data: {"b": 2}\r\r'
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_events_are_read_whole_however_the_stream_is_cut(size: int) -> None:
    """Lines end in CRLF, LF or CR, even split between pieces; data lines join with LF."""
    reader = SseReader(1024)
    events = []
    for start in range(0, len(STREAM), size):
        events.extend(reader.feed(STREAM[start : start + size]))
    assert events == [("2", b'{"a":\n1}'), ("2", b'{"b": 2}')]
    assert (reader.last_id, reader.retry) == ("2", 0.25)


def test_an_event_past_the_limit_is_read_past_and_the_next_one_read() -> None:
    """An event larger than the limit comes back as None, unkept; the stream goes on."""
    reader = SseReader(100)
    events = reader.feed(b"data: " + b"x" * 60 + b"\ndata: " + b"y" * 60 + b"\n\n")
    events += reader.feed(b"data: " + b"z" * 500)
    events += reader.feed(b"\n\ndata: {}\n\n")
    assert events == [(None, None), (None, None), (None, b"{}")]
