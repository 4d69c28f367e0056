"""The proxy's JSON-RPC id bookkeeping, apart from governance."""

from __future__ import annotations

from aegis.mcp._ids import IdTable


async def test_replies_find_the_request_waiting_under_the_proxys_own_id() -> None:
    """Two clients' requests with the same id get distinct server ids; each reply finds its own."""
    table = IdTable()
    first, one = table.open("a", None)
    second, two = table.open("a", (str, "p"))
    assert first != second
    assert table.answered({"jsonrpc": "2.0", "id": second, "result": {}})
    assert two.done()
    assert not one.done()
    assert not table.answered({"jsonrpc": "2.0", "id": True, "result": {}})  # not id 1
    assert not table.answered({"jsonrpc": "2.0", "id": str(first), "result": {}})
    table.close(second, (str, "p"))
    assert table.only_request() == "a"


def test_client_answers_are_routed_to_the_server_or_to_the_proxy() -> None:
    """An answer to a relayed server request goes back under the server's id, once."""
    table = IdTable()
    relayed = table.relay("server-7")
    own = table.own()
    assert table.client_answered(relayed) == ("server", "server-7")
    assert table.client_answered(relayed) == ("unknown", None)
    assert table.client_answered(own) == ("own", None)
    assert table.client_answered(str(own)) == ("unknown", None)


async def test_progress_tokens_name_their_request_while_it_is_in_flight() -> None:
    """A progress token points at its client request until that request is closed."""
    table = IdTable()
    server_id, _ = table.open(5, (int, 42))
    assert table.progress_of(42) == 5
    assert table.progress_of("42") is None
    table.close(server_id, (int, 42))
    assert table.progress_of(42) is None
