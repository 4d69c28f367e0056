"""The proxy's JSON-RPC id bookkeeping, apart from governance."""

from __future__ import annotations

from aegis.mcp._ids import MAX_CLIENT_PENDING, IdTable


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
    assert relayed is not None
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


def test_the_servers_cancel_names_the_id_the_client_knows_and_forgets_it() -> None:
    """A withdrawn server request is found by its server id; a late answer to it is dropped."""
    table = IdTable()
    first = table.relay(2)
    second = table.relay(1)
    assert table.withdrawn(1) == second
    assert table.withdrawn(1) is None
    assert table.withdrawn(True) is None
    assert second is not None
    assert first is not None
    assert table.client_answered(second) == ("unknown", None)
    assert table.client_answered(first) == ("server", 2)
    assert table.waiting_for_client == 0


def test_server_requests_waiting_for_the_client_are_capped() -> None:
    """Past MAX_CLIENT_PENDING a relay is refused; an answer makes room again."""
    table = IdTable()
    ids = [table.relay(f"s{i}") for i in range(MAX_CLIENT_PENDING)]
    assert None not in ids
    assert table.relay("one too many") is None
    first = ids[0]
    assert first is not None
    assert table.client_answered(first) == ("server", "s0")
    assert table.relay("room again") is not None


def test_only_the_newest_own_requests_are_remembered() -> None:
    """The proxy's own link offers are bounded: the oldest is forgotten first."""
    table = IdTable()
    ids = [table.own() for _ in range(MAX_CLIENT_PENDING + 1)]
    assert table.client_answered(ids[0]) == ("unknown", None)
    assert table.client_answered(ids[-1]) == ("own", None)
