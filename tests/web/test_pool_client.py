"""The chat client against a pool of two real nodes on PostgreSQL: two users on two nodes chat
live, and a node killed under a page: the page resumes on the other node without losing or
doubling a message (posts retried with their cid, rooms rejoined with `since`)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from chatserver.testing import PostgresCluster
from tests.web.conftest import (
    WebNode,
    in_thread,
    node_env,
    open_page,
    open_room,
    post,
    post_many,
    seed,
    shot,
    sign_in,
)

FAST = {
    "CHATSERVER_POOL_ENABLED": "true",
    "CHATSERVER_POOL_HEARTBEAT_S": "0.3",
    "CHATSERVER_POOL_LINK_TIMEOUT_S": "1.5",
    "CHATSERVER_POOL_DEAD_AFTER_S": "3",
    "CHATSERVER_POOL_CATCHUP_INTERVAL_S": "1",
}


@pytest.fixture(scope="module")
def pool(pg_cluster: PostgresCluster) -> Iterator[tuple[list[WebNode], dict[str, int]]]:
    url = in_thread(
        lambda: pg_cluster.create_database(f"web_{secrets.token_hex(4)}", template="postgres")
    )
    ids = seed(url, ["alice", "bob"], [("lobby", "open")])
    envs = [node_env(f"node{i}", url, **FAST) for i in (1, 2)]
    # Each page may open a WebSocket on either node (its own is admitted anyway).
    origins = json.dumps([f"http://{env['CHATSERVER_LISTEN_HTTP']}" for env in envs])
    secret = secrets.token_hex(32)
    nodes = []
    try:
        for env in envs:
            env.update(CHATSERVER_POOL_SECRET=secret, CHATSERVER_LISTEN_WEBSOCKET_ORIGINS=origins)
            nodes.append(WebNode(env["CHATSERVER_NODE_NAME"], env).start())
        nodes[0].wait_for(r"peer link node2 up")
        nodes[1].wait_for(r"peer link node1 up")
        yield nodes, ids
    finally:
        for node in nodes:
            node.stop()


def room_seqs(page: Any, room: int) -> list[int]:
    return page.evaluate(f"[...window.chatState.roomData.get({room}).seqs]")  # type: ignore[no-any-return]


def texts(page: Any, room: int) -> list[str]:
    return page.evaluate(  # type: ignore[no-any-return]
        f"(() => {{ const d = window.chatState.roomData.get({room});"
        " return d.seqs.map((s) => d.msgs.get(s).text); })()"
    )


def test_two_nodes_chat_live_and_a_killed_node_is_resumed_elsewhere(
    browser: Any, pool: tuple[list[WebNode], dict[str, int]]
) -> None:
    (node1, node2), ids = pool
    lobby = ids["lobby"]
    alice, alice_watch = open_page(browser, node1.url)
    bob, bob_watch = open_page(browser, node2.url)
    sign_in(alice, "alice")
    sign_in(bob, "bob")
    assert "node1" in alice.inner_text("#state") and "node2" in bob.inner_text("#state")
    open_room(alice, "lobby")
    open_room(bob, "lobby")
    post(alice, "from node1")
    bob.wait_for_selector(".msg .text >> text=from node1")
    post(bob, "from node2")
    alice.wait_for_selector(".msg .text >> text=from node2")

    # node1 dies under alice's page; she goes on typing, bob goes on posting.
    node1.kill()
    alice.wait_for_selector("#state:not([data-state=online])")
    for i in range(3):
        post(alice, f"typed while down {i}")
    post_many(node2, "bob", lobby, [f"posted while alice was away {i}" for i in range(3)])
    alice.wait_for_selector("#state[data-state=online] >> text=node2", timeout=60_000)
    alice.wait_for_selector(".msg .text >> text=typed while down 2")
    alice.wait_for_selector(".msg .text >> text=posted while alice was away 2")
    bob.wait_for_selector(".msg .text >> text=typed while down 2")
    # After it: live again, on node2.
    post(alice, "after the resume")
    bob.wait_for_selector(".msg .text >> text=after the resume")
    alice.wait_for_selector(".msg .text >> text=after the resume")
    shot(alice, "resumed")

    expected = (
        ["from node1", "from node2"]
        + [f"typed while down {i}" for i in range(3)]
        + [f"posted while alice was away {i}" for i in range(3)]
        + ["after the resume"]
    )
    for page in (alice, bob):
        held = room_seqs(page, lobby)
        assert held == list(range(1, len(held) + 1))  # no gap, no double
        assert sorted(texts(page, lobby)) == sorted(expected)  # nothing lost, nothing twice
    assert alice.evaluate("window.chatState.outbox.length") == 0
    for watch in (alice_watch, bob_watch):
        assert not watch.dialogs
    assert not bob_watch.errors
    alice.context.close()
    bob.context.close()
