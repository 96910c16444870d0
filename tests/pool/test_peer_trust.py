"""Attacks on the peer port (issue 15, part 1), each on real node processes and real sockets.

An attacker without the pool secret, one with it but an unregistered name, one holding the secret
and a registered name (an impostor), a flood of half-open handshakes, and peer TLS gone wrong:
each is refused or contained, logged as a warning with its reason, and counted in
``chatserver_pool_handshakes_refused``; the real messages are always delivered.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatserver.pool.local import LocalPool, NodeProcess
from chatserver.pool.protocol import CLOSED, PeerProtocol, encode_frame
from chatserver.pool.trust import certificate_warning
from chatserver.testing import PostgresCluster
from tests.conftest import scaled
from tests.pool.test_pool import (
    FAST,
    login,
    messages_until,
    new_database,
    running_pool,
    seed,
    wait_mesh,
)

TOKEN = "management-token-for-the-peer-trust-tests"


class Impostor:
    """A process speaking the peer protocol as ``name`` with ``secret`` (right or wrong)."""

    def __init__(self, name: str, secret: str, expect: str | None = None) -> None:
        self.proto = PeerProtocol("connector", name, secret, expect=expect)
        self.seen: list[bytes] = []  # every byte the node sent

    async def connect(self, address: tuple[str, int], **kw: Any) -> None:
        self.reader, self.writer = await asyncio.open_connection(*address, **kw)

    async def handshake(self, timeout: float = 5) -> bool:
        """Run the handshake to its end; True if the link opened."""
        async with asyncio.timeout(scaled(timeout)):
            while True:
                self.writer.write(self.proto.data_to_send())
                if self.proto.is_open:
                    return True
                if self.proto.state == CLOSED:
                    return False
                data = await self.reader.read(65536)
                if not data:
                    return False
                self.seen.append(data)
                self.proto.receive_data(data)

    def send_events(self, events: list[dict[str, Any]]) -> None:
        self.proto.send_events(events)
        self.writer.write(self.proto.data_to_send())

    def close(self) -> None:
        self.writer.close()


async def metrics(node: NodeProcess) -> str:
    scheme = "https" if node.env.get("CHATSERVER_TLS_CERTIFICATE") else "http"
    url = f"{scheme}://{node.env['CHATSERVER_LISTEN_MANAGEMENT']}/metrics"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, ssl=False) as reply,  # the test's own certificate
    ):
        assert reply.status == 200
        return await reply.text()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    braces = f"{{{re.escape(wanted)}}}" if labels else ""
    match = re.search(rf"^{name}(?:_total)?{braces} ([\d.e+]+)$", text, re.MULTILINE)
    assert match, f"no {name} {labels} in metrics"
    return float(match.group(1))


# -- 1. a strong secret or no pool ---------------------------------------------------------


async def test_a_pool_never_runs_without_a_strong_secret(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    from chatserver.server import StartupError
    from tests.conftest import node_config, start_node

    url = await new_database(pg_cluster)
    loopback = {"peer": "127.0.0.1:0"}
    refused = [
        ({}, r"pool\.secret is empty"),
        ({"secret": "the pool secret"}, r"pool\.secret is too weak \(15 characters\)"),
        ({"secret": "a" * 40}, r"pool\.secret is too weak"),
        ({"secret_file": str(tmp_path / "missing")}, r"pool\.secret_file: cannot read"),
        ({"secret": "x" * 64, "secret_file": str(tmp_path / "s")}, r"not both"),
    ]
    (tmp_path / "weak").write_text("short\n")
    refused.append(({"secret_file": str(tmp_path / "weak")}, r"pool\.secret_file .* too weak"))
    for pool, message in refused:
        config = node_config(url, pool={"enabled": True, **pool}, listen=loopback)
        with pytest.raises(StartupError, match=message):
            await start_node(config)
    # A strong secret from a file (with its trailing newline) starts the node.
    (tmp_path / "secret").write_text("0123456789abcdef" * 4 + "\n")
    config = node_config(
        url, pool={"enabled": True, "secret_file": str(tmp_path / "secret")}, listen=loopback
    )
    node = await start_node(config)
    try:
        assert node.pool is not None and node.pool.secret == "0123456789abcdef" * 4
    finally:
        await node.stop()


# -- 2. handshakes: no secret, wrong secret, unregistered name ------------------------------


async def test_strangers_cannot_complete_a_handshake(pg_cluster: PostgresCluster) -> None:
    """(a) an empty or wrong secret, (b) the right secret with an unregistered name: refused,
    logged with the reason, counted; nothing they send is applied."""
    url = await new_database(pg_cluster)
    ids = await seed(url, ["carol"], ["lobby"])
    async with running_pool(url, 2, CHATSERVER_MANAGEMENT_TOKEN=TOKEN) as pool:
        n1, n2 = pool.nodes
        carol = await login(n2, "carol")
        await carol.call("join", room=ids["lobby"])

        for secret in ("", "not the pool secret but long enough to pass a length check"):
            thief = Impostor("node1", secret, expect="node2")
            await thief.connect(n2.peer)
            assert not await thief.handshake()
            assert "authentication failed" in (thief.proto.close_reason or "")
            # The node proved nothing: no READY, and the CHALLENGE held only a name and a nonce.
            assert b"READY" not in b"".join(thief.seen) and b"proof" not in b"".join(thief.seen)
            thief.close()
        await n2.wait_for(r"WARNING.*handshake refused: authentication failed \[bad_proof\]")

        # The right secret, a name the registry does not hold: refused before any challenge.
        stranger = Impostor("node0", pool.secret, expect="node2")
        await stranger.connect(n2.peer)
        assert not await stranger.handshake()
        assert "not registered" in (stranger.proto.close_reason or "")
        assert b"CHALLENGE" not in b"".join(stranger.seen)
        stranger.close()
        await n2.wait_for(r"WARNING.*'node0' is not registered in this pool \[unregistered\]")
        # A registered name that never dials this node (the lower name dials) is refused too.
        backwards = Impostor("node2", pool.secret, expect="node1")
        await backwards.connect(n1.peer)
        assert not await backwards.handshake()
        assert "does not dial" in (backwards.proto.close_reason or "")
        backwards.close()

        # A recorded handshake replayed: the node's fresh nonce makes the old proof wrong.
        spy = Impostor("node1", pool.secret, expect="node2")
        await spy.connect(n2.peer)
        hello = spy.proto.data_to_send()
        spy.writer.write(hello)
        spy.proto.receive_data(await spy.reader.read(65536))
        auth = spy.proto.data_to_send()
        spy.writer.write(auth)
        assert b"READY" in await asyncio.wait_for(spy.reader.read(65536), scaled(5))
        spy.close()  # (it replaced node1's link for a moment; node1 dials again)
        replay = Impostor("node1", "")
        await replay.connect(n2.peer)
        replay.writer.write(hello)
        await replay.reader.read(65536)  # a new CHALLENGE
        replay.writer.write(auth)
        assert b"authentication failed" in await replay.reader.read(65536)
        replay.close()

        # Events without a handshake: an error, the connection closed, nothing delivered.
        reader, writer = await asyncio.open_connection(*n2.peer)
        forged = {"t": "disconnect", "user": ids["carol"], "reason": "disabled"}
        writer.write(encode_frame({"cmd": "EVENTS", "events": [forged]}))
        assert b"ERROR" in await asyncio.wait_for(reader.read(65536), scaled(5))
        assert await asyncio.wait_for(reader.read(65536), scaled(5)) == b""
        writer.close()
        await carol.call("ping")  # still connected

        text = await metrics(n2)
        assert metric(text, "chatserver_pool_handshakes_refused", reason="bad_proof") >= 3
        assert metric(text, "chatserver_pool_handshakes_refused", reason="unregistered") >= 1
        # The spy replaced node1's link for a moment; node1 dials again and the link is up.
        for _ in range(int(scaled(10) / 0.1)):
            if metric(await metrics(n2), "chatserver_pool_peer_link_up", peer="node1") == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("node1's link did not come back")
        assert metric(await metrics(n1), "chatserver_pool_peer_link_up", peer="node2") == 1
        await carol.close()


# -- 3. an impostor holding the secret and a registered name ---------------------------------


async def test_an_impostor_cannot_contradict_the_store(pg_cluster: PostgresCluster) -> None:
    """(c) a forged message "from admin", (d) a forged disconnect and revocation, (e) a forged
    seq of 1,000,000, a forged edit: none reaches a subscriber, the backchat or a session; the
    real message with the forged seq is delivered live."""
    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice", "bob", "carol"], ["lobby"])
    lobby = ids["lobby"]
    async with running_pool(url, 2, CHATSERVER_MANAGEMENT_TOKEN=TOKEN) as pool:
        n1, n2 = pool.nodes
        alice, carol, bob = (
            await login(n2, "alice"),
            await login(n2, "carol"),
            await login(n1, "bob"),
        )
        for client in (alice, bob):
            await client.call("join", room=lobby)
        await bob.call("post", room=lobby, text="first", cid="b1")
        assert [m["text"] for m in await messages_until(alice, lobby, 1)] == ["first"]

        impostor = Impostor("node1", pool.secret, expect="node2")  # node1 really exists
        await impostor.connect(n2.peer)
        assert await impostor.handshake()

        def message(seq: int, text: str) -> dict[str, Any]:
            sender = {"id": 1, "name": "admin"}
            m = {"room": lobby, "seq": seq, "ts": 1, "sender": sender, "text": text, "cid": "f"}
            return {"t": "msg", "m": {**m, "kept": True}}

        impostor.send_events(
            [
                message(2, "forged next seq"),
                message(1_000_000, "forged far ahead"),
                message(1, "forged over a delivered seq"),
                {"t": "msg", "m": {**message(1, "x")["m"], "room": 987654}},  # no such room
                {"t": "disconnect", "user": ids["carol"], "reason": "disabled"},
                {
                    "t": "revoked",
                    "user": ids["carol"],
                    "token": None,
                    "keep": None,
                    "reason": "revoked",
                },
                {"t": "edit", "room": lobby, "changes": [[1, "replaced", "edited"]], "clear": None},
                {"t": "invited", "room": lobby, "users": [ids["carol"]], "by": {"name": "admin"}},
            ]
        )
        await n2.wait_for(r"dropped \d+ message events from node1 the store does not have")
        await n2.wait_for(r"ignored 1 edits from a peer that the store does not show")
        await n2.wait_for(r"user \d+ not disconnected: the store shows no reason")
        impostor.close()

        # The real message 2, posted after the forgery, reaches alice live.
        await bob.call("post", room=lobby, text="second", cid="b2")
        got = await messages_until(alice, lobby, 2)
        assert [m["text"] for m in got] == ["second"]
        await asyncio.sleep(0.5)
        leftovers = []
        while not alice.events.empty():
            leftovers.append(alice.events.get_nowait())
        assert not any(e["ev"] in ("resync", "message.changed") for e in leftovers), leftovers
        # Carol was neither disconnected nor revoked nor told of an invitation the store does
        # not hold; a later joiner's backchat is the store's.
        await carol.call("ping")  # still connected
        while not carol.events.empty():
            assert carol.events.get_nowait()["ev"] != "invited"
        joined = await carol.call("join", room=lobby)
        texts = [m["text"] for m in joined["messages"]]
        assert texts == ["first", "second"]
        assert "WARNING" in "".join(n2.lines) and "replaces the open one" in "".join(n2.lines)
        # Forged seqs 2 and 1,000,000, the forgery over seq 1, the edit (the unknown room is
        # not one node2 follows: ignored without a store read).
        assert metric(await metrics(n2), "chatserver_pool_events_contradicted") >= 4
        for client in (alice, bob, carol):
            await client.close()


async def test_an_impostor_using_a_stopped_nodes_name_stays_checked(
    pg_cluster: PostgresCluster,
) -> None:
    """node1 is stopped (SIGSTOP); an impostor takes its name towards node2 and keeps the link
    alive with pings (so node2 keeps node1's row: a node heard over a link is not expired). Past
    the new link's probation its messages are still re-read from the store, because node1's
    heartbeat is stale; once it goes silent, the link is closed and node1 expired."""
    import signal

    url = await new_database(pg_cluster)
    ids = await seed(url, ["alice"], ["lobby"])
    async with running_pool(url, 2) as pool:
        n1, n2 = pool.nodes
        alice = await login(n2, "alice")
        await alice.call("join", room=ids["lobby"])
        n1.signal(signal.SIGSTOP)
        pinging: asyncio.Task[None] | None = None
        try:
            await n2.wait_for(r"peer node1 silent", scaled(10))
            impostor = Impostor("node1", pool.secret, expect="node2")
            await impostor.connect(n2.peer)
            assert await impostor.handshake()

            async def keep_alive() -> None:  # so that node2 does not close a silent link
                while True:
                    impostor.proto.send_ping(0)
                    impostor.writer.write(impostor.proto.data_to_send())
                    await asyncio.sleep(0.2)

            async def drain() -> None:  # node2's pings
                while await impostor.reader.read(65536):
                    pass

            pinging = asyncio.create_task(keep_alive())
            reading = asyncio.create_task(drain())
            await asyncio.sleep(4.5)  # past the probation of a new link (3 s + 2 x 0.3 s)
            assert not reading.done()  # node2 keeps the link (and node1's row)
            m = {"room": ids["lobby"], "seq": 1, "ts": 1, "sender": {"id": 1, "name": "admin"}}
            impostor.send_events([{"t": "msg", "m": {**m, "text": "forged", "cid": "f"}}])
            await n2.wait_for(r"dropped 1 message events from node1 the store does not have")
            await asyncio.sleep(0.3)
            assert alice.events.empty()
            # Silent, the link is closed; node1 (still stopped) is expired.
            pinging.cancel()
            mark = len(n2.lines)
            await asyncio.wait_for(reading, scaled(10))
            await n2.wait_for(r"expired stale nodes node1", scaled(10), start=mark)
            impostor.close()
        finally:
            if pinging is not None:
                pinging.cancel()
            n1.signal(signal.SIGCONT)
        await alice.close()


# -- 4. before authentication: small frames, few connections, a deadline ---------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_half_open_handshakes_cost_bounded_memory(pg_cluster: PostgresCluster) -> None:
    """(f) 20 connections each announcing a 16 MiB frame and sending its first MiB: each is
    refused from the frame's header; the node's memory stays flat. A 9th silent connection
    from one address is refused at once; silent ones are closed at the handshake deadline."""
    url = await new_database(pg_cluster)
    pool = LocalPool(url, env=FAST)
    try:
        (node,) = await pool.start(1)
        assert node.proc is not None
        before = rss_kib(node.proc.pid)
        chunk = b"\x00" * (1 << 20)
        closed_after: list[float] = []

        async def flood(i: int) -> None:
            reader, writer = await asyncio.open_connection(
                *node.peer, local_addr=(f"127.0.0.{2 + i}", 0)
            )
            started = time.monotonic()
            try:
                writer.write((16 << 20).to_bytes(4, "big"))
                writer.write(chunk)
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(65536), scaled(5))
                assert b"exceeds 4096" in answer
                while await asyncio.wait_for(reader.read(65536), scaled(5)):
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass
            closed_after.append(time.monotonic() - started)
            writer.close()

        await asyncio.gather(*(flood(i) for i in range(20)))
        after = rss_kib(node.proc.pid)
        print(f"node RSS {before} KiB -> {after} KiB; refused within {max(closed_after):.3f} s")
        assert len(closed_after) == 20 and max(closed_after) < scaled(2)
        assert after - before < 40 * 1024  # was +330 MB; now a few MB at most
        await node.wait_for(r"frame of 16777216 bytes exceeds 4096 \[frame_too_large\]")

        # The per-address cap: 8 silent connections are held, the 9th is refused at once.
        silent = [
            await asyncio.open_connection(*node.peer, local_addr=("127.0.0.50", 0))
            for _ in range(8)
        ]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection(*node.peer, local_addr=("127.0.0.50", 0))
        assert await asyncio.wait_for(reader.read(100), scaled(2)) == b""
        writer.close()
        await node.wait_for(r"too many unauthenticated peer connections.* \[too_many\]")
        # The held ones are closed at the handshake deadline (5 s).
        started = time.monotonic()
        for r, w in silent:
            assert await asyncio.wait_for(r.read(100), scaled(10)) == b""
            w.close()
        print(f"silent connections closed after {time.monotonic() - started:.1f} s")
        await node.wait_for(r"no handshake within 5 s \[timeout\]")
    finally:
        await pool.stop()


# -- 5. peer TLS failures are loud ----------------------------------------------------------


def write_cert(
    path: Path, ca: Any, *, not_before: Any = None, not_after: Any = None
) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", not_before=not_before, not_after=not_after)
    path.mkdir(parents=True, exist_ok=True)
    cert.cert_chain_pems[0].write_to_path(str(path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(path / "key.pem"))
    ca.cert_pem.write_to_path(str(path / "ca.pem"))
    return {
        "CHATSERVER_TLS_CERTIFICATE": str(path / "cert.pem"),
        "CHATSERVER_TLS_KEY": str(path / "key.pem"),
    }


async def test_peer_tls_failures_are_logged_counted_and_bounded(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """A leaf certificate without pool.peer_ca, a peer_ca that did not sign the peers'
    certificates: warnings with the reason on both sides, counted; a connection that never
    starts TLS is closed at the deadline, on the peer port and on the client TCP port."""
    import trustme

    ca, other = trustme.CA(), trustme.CA()
    tls = write_cert(tmp_path / "a", ca)
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    url = await new_database(pg_cluster)
    env = {**FAST, **tls, "CHATSERVER_MANAGEMENT_TOKEN": TOKEN}
    env["CHATSERVER_LIMITS_AUTH_TIMEOUT_S"] = "1"
    pool = LocalPool(url, env=env)
    try:
        # node1 dials node2 (the lower name dials): node1 has no peer_ca (checks against its own
        # leaf, which is not a CA), node2 is fine.
        n1 = await pool.add()
        n2 = await pool.add(CHATSERVER_POOL_PEER_CA=str(tmp_path / "a" / "ca.pem"))
        await n1.wait_for(
            r"WARNING.*TLS: certificate not trusted.*set pool\.peer_ca.*tls_unknown_ca"
        )
        await n2.wait_for(r"WARNING.*peer 127\.0\.0\.1:\d+: TLS.*\[tls_")
        text = await metrics(n1)
        assert metric(text, "chatserver_pool_handshakes_refused", reason="tls_unknown_ca") >= 1
        assert metric(text, "chatserver_pool_peer_link_up", peer="node2") == 0

        # A TCP connection that never starts its TLS handshake: closed at the deadline.
        for address, bound in ((n2.peer, 5), (n2.tcp, 1), (n2.websocket, 1)):
            reader, writer = await asyncio.open_connection(*address)
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(100), scaled(bound + 5)) == b""
            took = time.monotonic() - started
            print(f"silent connection to {address} closed after {took:.1f} s")
            assert took < bound + 2
            writer.close()
        await n2.wait_for(r"no TLS handshake within 5 s \[timeout\]")

        # node1 restarted with a peer_ca of another CA: still refused, with the reason.
        await n1.stop()
        n1.env["CHATSERVER_POOL_PEER_CA"] = str(tmp_path / "other.pem")
        await n1.start()
        await n1.started()
        await n1.wait_for(r"WARNING.*TLS: certificate not trusted by .*other\.pem.*tls_unknown_ca")
        # And with the right one, the link comes up.
        await n1.stop()
        n1.env["CHATSERVER_POOL_PEER_CA"] = str(tmp_path / "a" / "ca.pem")
        await n1.start()
        await n1.started()
        await wait_mesh([n1, n2])
    finally:
        await pool.stop()


async def test_an_expired_peer_certificate_is_warned_about_and_refused(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    import trustme

    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    good = write_cert(tmp_path / "good", ca)
    expired = write_cert(
        tmp_path / "old",
        ca,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    url = await new_database(pg_cluster)
    peer_ca = {"CHATSERVER_POOL_PEER_CA": str(tmp_path / "good" / "ca.pem")}
    pool = LocalPool(url, env={**FAST, **peer_ca})
    try:
        n1 = await pool.add(**good)
        n2 = await pool.add(**expired)  # node1 dials node2 and finds its certificate expired
        await n2.wait_for(r"WARNING.*the certificate .*cert\.pem expired on")
        await n1.wait_for(r"WARNING.*TLS: the peer's certificate has expired.*\[tls_expired\]")
    finally:
        await pool.stop()


def test_the_start_up_warning_names_a_certificate_about_to_expire(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    soon = ca.issue_cert("x", not_after=now + datetime.timedelta(days=10))
    later = ca.issue_cert("x", not_after=now + datetime.timedelta(days=100))
    soon.cert_chain_pems[0].write_to_path(str(tmp_path / "soon.pem"))
    later.cert_chain_pems[0].write_to_path(str(tmp_path / "later.pem"))
    warning = certificate_warning(str(tmp_path / "soon.pem"))
    assert warning is not None and "expires on" in warning and "in 9 days" in warning
    assert certificate_warning(str(tmp_path / "later.pem")) is None
    assert "cannot read" in (certificate_warning(str(tmp_path / "none.pem")) or "")
