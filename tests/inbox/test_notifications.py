"""Webhook and Slack notifications delivered to a real HTTP receiver on loopback."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from webhook_receiver import Receiver

from aegis.server.notify import (
    EVENT_TYPES,
    Notification,
    Notifications,
    sign_payload,
    slack_message,
    verify_signature,
)

SECRET = "test-secret"

REQUEST: dict[str, Any] = {
    "id": "apr_1",
    "status": "pending",
    "action": {
        "type": "refund",
        "target": "billing",
        "params": {"amount": 900},
        "description": "refund order 7",
    },
    "risk_level": "HIGH",
    "matched_rule": "refunds",
    "reason": "refunds need a human",
    "requester": "support-bot",
    "decisions": [],
}


@pytest.fixture
def notifications() -> Iterator[list[Notifications]]:
    """Collects the Notifications a test makes and closes them afterwards."""
    made: list[Notifications] = []
    yield made
    for item in made:
        item.close(timeout=0.5)


def make(made: list[Notifications], *args: Any, **kwargs: Any) -> Notifications:
    kwargs.setdefault("secret", SECRET)
    kwargs.setdefault("backoff", 0.02)
    kwargs.setdefault("timeout", 1.0)
    kwargs.setdefault("public_url", "http://127.0.0.1:8700")
    item = Notifications(*args, **kwargs)
    made.append(item)
    return item


def dead_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_webhook_event_is_signed_json_with_link(notifications: list[Notifications]) -> None:
    """A webhook receives the event, its link and a signature that verifies with the secret."""
    with Receiver() as receiver:
        make(notifications, [receiver.url]).publish("approval.requested", REQUEST)
        (delivery,) = receiver.wait_for(1)
    body = delivery.json()
    assert body["type"] == "approval.requested"
    assert body["request"] == REQUEST
    assert body["link"] == "http://127.0.0.1:8700/requests/apr_1"
    assert body["id"].startswith("evt_")
    assert delivery.headers["X-Aegis-Event"] == "approval.requested"
    assert delivery.headers["X-Aegis-Delivery"] == body["id"]
    assert delivery.headers["Content-Type"] == "application/json"
    signature = delivery.headers["X-Aegis-Signature"]
    delivered = delivery.headers["X-Aegis-Delivery"]
    assert verify_signature(SECRET, delivery.body, signature, delivered)
    assert not verify_signature("another-secret", delivery.body, signature, delivered)
    assert not verify_signature(SECRET, delivery.body.replace(b"900", b"901"), signature, delivered)
    # the delivery id receivers deduplicate on is signed: a replay under a new id fails
    assert not verify_signature(SECRET, delivery.body, signature, "evt_replayed")


def test_signature_refuses_stale_and_malformed_headers() -> None:
    """A signature older than the tolerance, or a malformed header, does not verify."""
    body = b'{"id":"evt_1"}'
    old = sign_payload(SECRET, body, "evt_1", timestamp=1_700_000_000)
    assert verify_signature(SECRET, body, old, "evt_1", now=1_700_000_000 + 299)
    assert not verify_signature(SECRET, body, old, "evt_1", now=1_700_000_000 + 301)
    assert not verify_signature(SECRET, body, old, "evt_1", now=1_700_000_000 - 301)
    mac = old.split("v2=")[1]
    for header in (None, "", "v2=" + mac, "t=abc,v2=" + mac, "t=1700000000", f"t=1,t=2,v2={mac}"):
        assert not verify_signature(SECRET, body, header, "evt_1", now=1_700_000_000), header
    # the timestamp is covered: moving it forward breaks the MAC
    assert not verify_signature(SECRET, body, f"t=1700000100,v2={mac}", "evt_1", now=1_700_000_100)


@pytest.mark.parametrize(
    ("body", "header", "delivery"),
    [
        (b"{}", "t=1700000000,v2=\u00e9", "evt_1"),  # non-ASCII MAC
        (b"{}", "t=1700000000,v2=\udc80", "evt_1"),  # a lone surrogate
        (b"{}", "t=\u0661\u0662,v2=ab", "evt_1"),  # digits, but not ASCII ones
        (b"{}", b"t=1700000000,v2=ab", "evt_1"),  # bytes, not text
        ("{}", "t=1700000000,v2=ab", "evt_1"),  # a body that is not bytes
        (None, "t=1700000000,v2=ab", "evt_1"),
        (b"{}", "t=1700000000,v2=ab", None),  # no delivery id
        (b"{}", "t=1700000000,v2=ab", "\u00e9vt"),
    ],
)
def test_malformed_input_answers_false(body: Any, header: Any, delivery: Any) -> None:
    """verify_signature answers False for malformed headers and bodies, never raises."""
    assert verify_signature(SECRET, body, header, delivery, now=1_700_000_000) is False


def test_retries_with_backoff_until_the_receiver_accepts(
    notifications: list[Notifications],
) -> None:
    """Failures (500, 503, 429) are retried with growing delays, each attempt freshly signed."""
    with Receiver([500, 503, 429, 200]) as receiver:
        notifier = make(notifications, [receiver.url], backoff=0.05)
        notifier.publish("approval.decided", {**REQUEST, "status": "approved"})
        deliveries = receiver.wait_for(4)
        time.sleep(0.1)
        assert len(receiver.deliveries) == 4  # nothing after the success
    assert len({d.headers["X-Aegis-Delivery"] for d in deliveries}) == 1
    assert all(
        verify_signature(
            SECRET, d.body, d.headers["X-Aegis-Signature"], d.headers["X-Aegis-Delivery"]
        )
        for d in deliveries
    )
    gaps = [b.at - a.at for a, b in itertools.pairwise(deliveries)]
    # jittered exponential backoff: 0.05 * 2**n * [0.5, 1]
    assert gaps[0] >= 0.02
    assert gaps[2] >= 0.09
    ((_, stats),) = notifier.stats
    assert (stats.delivered, stats.retried, stats.failed) == (1, 3, 0)


def test_client_error_is_not_retried(notifications: list[Notifications]) -> None:
    """A 400 from the receiver is final: one attempt, counted as failed."""
    with Receiver([400]) as receiver:
        notifier = make(notifications, [receiver.url])
        notifier.publish("approval.expired", {**REQUEST, "status": "expired"})
        receiver.wait_for(1)
        time.sleep(0.2)
        assert len(receiver.deliveries) == 1
    ((_, stats),) = notifier.stats
    assert (stats.delivered, stats.failed) == (0, 1)


def test_dead_receiver_is_given_up_after_the_attempts(notifications: list[Notifications]) -> None:
    """A receiver that refuses connections costs publish nothing and is dropped after N attempts."""
    notifier = make(notifications, [dead_url()], attempts=3, backoff=0.01)
    started = time.perf_counter()
    for _ in range(20):
        notifier.publish("approval.requested", REQUEST)
    assert time.perf_counter() - started < 0.5
    deadline = time.monotonic() + 10
    while notifier.stats[0][1].failed < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    ((_, stats),) = notifier.stats
    assert (stats.failed, stats.retried, stats.delivered) == (20, 40, 0)


def test_hanging_receiver_delays_neither_publish_nor_other_receivers(
    notifications: list[Notifications],
) -> None:
    """A receiver that never answers times out in the background; another receiver is served."""
    with Receiver(default="hang") as hanging, Receiver() as healthy:
        notifier = make(notifications, [hanging.url, healthy.url], timeout=0.5, attempts=2)
        started = time.perf_counter()
        for event_type in EVENT_TYPES:
            notifier.publish(event_type, REQUEST)
        # had publish waited for the hanging receiver, this would take 5 x 0.5 s or more
        assert time.perf_counter() - started < 1.0
        got = healthy.wait_for(len(EVENT_TYPES), timeout=5)
        assert [d.json()["type"] for d in got] == list(EVENT_TYPES)
        hanging.wait_for(2, timeout=5)  # the first event, tried twice
        started = time.perf_counter()
        notifier.close(timeout=0.5)
        assert time.perf_counter() - started < 3
    stats = dict(notifier.stats)
    healthy_port = healthy.server.server_address[1]
    assert stats[f"webhook http://127.0.0.1:{healthy_port}/…"].delivered == len(EVENT_TYPES)
    assert stats[f"webhook http://127.0.0.1:{hanging.server.server_address[1]}/…"].delivered == 0


def test_full_queue_drops_the_oldest_event(notifications: list[Notifications]) -> None:
    """Behind a hanging receiver the queue stays bounded, dropping its oldest events."""
    with Receiver(default="hang") as hanging:
        notifier = make(notifications, [hanging.url], timeout=5, max_queue=3)
        notifier.publish("approval.requested", REQUEST)
        hanging.wait_for(1)  # now in flight, hanging
        for index in range(9):
            notifier.publish("approval.requested", {**REQUEST, "id": f"apr_{index}"})
        deadline = time.monotonic() + 5
        while notifier.stats[0][1].dropped < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert notifier.stats[0][1].dropped == 6  # one in flight, three queued


def test_webhook_requires_a_secret() -> None:
    """Webhooks without a secret are refused: receivers could not tell a forged event."""
    with pytest.raises(ValueError, match="AEGIS_WEBHOOK_SECRET"):
        Notifications(["http://127.0.0.1:9/hook"])
    with pytest.raises(ValueError, match="not an http"):
        Notifications(["ftp://example/hook"], secret="s")


def test_unknown_event_type_is_refused() -> None:
    """Only the four documented event types exist."""
    with pytest.raises(ValueError, match="unknown approval event"):
        Notification("approval.approved", REQUEST)


def test_slack_request_message_has_fields_and_button(notifications: list[Notifications]) -> None:
    """Slack receives Block Kit with action, risk, rule, agent and a button to the request page."""
    with Receiver() as slack:
        make(notifications, slack_webhooks=[slack.url], secret=None).publish(
            "approval.requested", REQUEST
        )
        (delivery,) = slack.wait_for(1)
    assert "X-Aegis-Signature" not in delivery.headers
    message = delivery.json()
    assert message["text"] == "Approval needed: refund on billing (risk HIGH, rule refunds)"
    blocks = message["blocks"]
    fields = " ".join(f["text"] for f in blocks[1]["fields"])
    for expected in ("refund on billing", "HIGH", "refunds", "support-bot"):
        assert expected in fields
    (button,) = blocks[-1]["elements"]
    assert button["url"] == "http://127.0.0.1:8700/requests/apr_1"
    assert button["style"] == "primary"


def test_slack_decided_message_names_reviewer_and_verdict() -> None:
    """A decision posts who decided and the verdict, with the comment."""
    decided = {
        **REQUEST,
        "status": "denied",
        "decisions": [
            {"reviewer": "alice", "verdict": "approve", "comment": None, "at": "t1"},
            {"reviewer": "bob", "verdict": "deny", "comment": "not today", "at": "t2"},
        ],
    }
    message = slack_message(Notification("approval.decided", decided, link="http://x/requests/1"))
    assert message["text"] == "Denied by bob: refund on billing (not today)"
    assert message["blocks"][0]["text"]["text"] == "Denied by bob"
    approved = {
        **REQUEST,
        "status": "approved",
        "decisions": [
            {"reviewer": "alice", "verdict": "approve", "comment": "ok", "at": "t1"},
            {"reviewer": "carol", "verdict": "approve", "comment": None, "at": "t2"},
        ],
    }
    message = slack_message(Notification("approval.decided", approved))
    assert message["text"] == "Approved by alice, carol: refund on billing (ok)"
    assert all(block["type"] != "actions" for block in message["blocks"])  # no link, no button


def test_slack_escapes_what_the_agent_wrote() -> None:
    """Mentions and links in agent text cannot be formed: <, > and & are escaped."""
    hostile = {
        **REQUEST,
        "action": {
            "type": "<!channel>",
            "target": "<https://evil.example|click>",
            "params": {},
            "description": "a & b <@U123>",
        },
        "reason": "<!here>",
    }
    text = json.dumps(slack_message(Notification("approval.requested", hostile)))
    for raw in ("<!channel>", "<https://evil", "<@U123>", "<!here>"):
        assert raw not in text
    assert "&lt;!channel&gt;" in text
    assert "a &amp; b" in text


def test_slack_says_why_and_marks_the_agents_words() -> None:
    """The request message says why a person is asked, as the inbox does; the agent's words quoted.

    The matched conditions carry the agent's values: escaped like all it wrote.
    """
    asked = {
        **REQUEST,
        "why": {
            "rule": "refunds",
            "description": "Refunds above 500 need a person",
            "conditions": ["amount 1,299 > 500", "note '<!channel>' contains '!'"],
            "reason": "",
        },
    }
    message = slack_message(Notification("approval.requested", asked))
    details = "\n".join(
        block["text"]["text"]
        for block in message["blocks"]
        if block["type"] == "section" and "text" in block
    )
    assert "*Why:* Refunds above 500 need a person" in details
    # Slack reads &gt; and &lt; as > and <
    assert "*Matched:* amount 1,299 &gt; 500; note '&lt;!channel&gt;' contains '!'" in details
    assert "*Agent wrote:* \u201crefund order 7\u201d" in details
    assert "Description" not in details
    assert "<!channel>" not in json.dumps(message)


def test_publish_after_close_is_a_no_op(notifications: list[Notifications]) -> None:
    """After close, publish returns None and sends nothing."""
    with Receiver() as receiver:
        notifier = make(notifications, [receiver.url])
        assert notifier.publish("approval.requested", REQUEST) is not None
        receiver.wait_for(1)
        notifier.close()
        assert notifier.publish("approval.requested", REQUEST) is None
        time.sleep(0.1)
        assert len(receiver.deliveries) == 1


def test_slack_says_a_grant_approved_a_request_without_asking() -> None:
    """A request filed already approved by a grant is announced as such, not as needing approval."""
    granted = {**REQUEST, "status": "approved", "grant_id": "grt_1"}
    message = slack_message(Notification("approval.requested", granted, link="http://x/r/1"))
    assert message["text"].startswith("Approved by grt_1: refund on billing")
    (button,) = message["blocks"][-1]["elements"]
    assert "style" not in button
    assert button["text"]["text"] == "Open request"


def test_a_dropped_kept_alive_connection_is_reopened(notifications: list[Notifications]) -> None:
    """A receiver that hangs up an idle kept-alive connection still gets every event, unretried."""
    with Receiver(stale_keep_alive=True) as receiver:
        notifier = make(notifications, [receiver.url])
        for index in range(3):
            notifier.publish("approval.requested", {**REQUEST, "id": f"apr_{index}"})
            receiver.wait_for(index + 1)
            time.sleep(0.05)  # let the receiver hang up before the next event
    ((_, stats),) = notifier.stats
    assert (stats.delivered, stats.retried, stats.failed) == (3, 0, 0)


def test_close_does_not_wait_for_hanging_receivers(notifications: list[Notifications]) -> None:
    """close(t) returns after about t even while deliveries hang on a 10 s socket timeout."""
    with Receiver(default="hang") as first, Receiver(default="hang") as second:
        notifier = make(notifications, [first.url, second.url], timeout=10)
        notifier.publish("approval.requested", REQUEST)
        first.wait_for(1)
        second.wait_for(1)
        started = time.perf_counter()
        notifier.close(timeout=0.3)
        # waiting for the in-flight attempts would take 10 s
        assert time.perf_counter() - started < 3
        assert notifier.publish("approval.requested", REQUEST) is None
