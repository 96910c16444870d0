"""The worker process: simulated users on lean connections, driven phase by phase by the parent.

Each worker gets its share of the users (``cfg["users"]``: id, name, token, the rooms to subscribe
to when connecting, the rooms to join during a join phase, the rooms to post in) and one 127.0.0.x
source address. The parent sends commands on a queue; the worker runs each and says ``done``. Once a
second it sends a snapshot of its :class:`~loadtest.stats.Recorder`.

Commands (``op``): ``connect`` (to ``host``/``port``, TCP or WebSocket, then subscribe),
``run`` (any of: posting closed-loop or at a rate, joining closed-loop or at a rate, pings at an
interval; for ``duration`` seconds), ``disconnect``, ``stop``.

Latencies (microseconds in the histograms): ``ack`` — post written → its reply (from the
intended send time when paced, so a stalled server is not hidden); ``delivery`` — post written →
a subscriber read the message event (the send time travels in the message text, and one event per
read is sampled); ``join`` — join written → reply; ``login`` — connect → authenticated.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import random
import resource
import time
from typing import Any

import msgpack

from .lean import Lean, connect
from .stats import Recorder

_now = time.monotonic_ns


def main(index: int, cfg: dict[str, Any], commands: Any, out: Any) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(Worker(index, cfg, commands, out).run())


class Worker:
    def __init__(self, index: int, cfg: dict[str, Any], commands: Any, out: Any) -> None:
        self.index = index
        self.cfg = cfg
        self.commands = commands
        self.out = out
        self.rec = Recorder()
        self.conns: list[Lean | None] = []
        self.users: list[dict[str, Any]] = cfg["users"]
        self.text_pad = "x" * max(0, int(cfg.get("text_bytes", 100)) - 20)
        self._events_seen = 0
        self._cids = itertools.count()
        self.active = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(self._tick())
        try:
            while True:
                cmd = await loop.run_in_executor(None, self.commands.get)
                if cmd["op"] == "stop":
                    break
                info = await getattr(self, "cmd_" + cmd["op"])(cmd)
                self._flush_events()
                self.out.put(("snap", self.index, time.monotonic(), self.rec.snapshot()))
                self.out.put(("done", self.index, info or {}))
        finally:
            ticker.cancel()
            for conn in self.conns:
                if conn is not None:
                    conn.close()
            await asyncio.sleep(0.1)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._flush_events()
            try:
                self.out.put_nowait(("snap", self.index, time.monotonic(), self.rec.snapshot()))
            except queue.Full:
                pass

    def _flush_events(self) -> None:
        seen = sum(c.events for c in self.conns if c is not None)
        if seen > self._events_seen:
            self.rec.count("delivered", seen - self._events_seen)
        self._events_seen = seen

    # -- receiving ------------------------------------------------------------------------------

    def _sample(self, body: bytes) -> None:
        try:
            obj = msgpack.unpackb(body)
            sent = int(obj["text"].split(" ", 1)[0])
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        self.rec.record_us("delivery", (_now() - sent) / 1000)

    def _event(self, conn: Lean, obj: dict[str, Any]) -> None:
        ev = obj.get("ev")
        if ev == "message":
            if not conn.count_mode:
                self._sample_obj(obj)
            return
        self.rec.count(f"event_{ev}")
        if ev == "resync" and self.active:
            # Rejoin so that the room keeps delivering to this subscriber (counted, not hidden).
            conn.send("join", lambda reply, t0: None, room=obj["room"])

    def _sample_obj(self, obj: dict[str, Any]) -> None:
        try:
            sent = int(obj["text"].split(" ", 1)[0])
        except (ValueError, KeyError, AttributeError):
            return
        self.rec.record_us("delivery", (_now() - sent) / 1000)

    # -- commands -------------------------------------------------------------------------------

    async def cmd_connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        websocket = bool(cmd.get("websocket"))
        host, port = cmd["host"], int(cmd["port"])
        count_mode = bool(cmd.get("count_mode", True))
        limit = asyncio.Semaphore(int(cmd.get("concurrency", 64)))
        subscribe = bool(cmd.get("subscribe", True))
        self.conns = [None] * len(self.users)
        self._events_seen = 0
        failures = 0
        max_index = cmd.get("max_index")

        async def one(i: int, user: dict[str, Any]) -> None:
            nonlocal failures
            if max_index is not None and user["index"] >= max_index:
                return
            async with limit:
                t0 = _now()
                try:
                    conn = await connect(
                        host,
                        port,
                        websocket=websocket,
                        source=self.cfg.get("source"),
                        token=user["token"],
                    )
                except Exception:
                    failures += 1
                    self.rec.count("connect_failed")
                    return
                self.rec.record_us("login", (_now() - t0) / 1000)
                conn.count_mode = count_mode
                conn.on_sample = self._sample
                conn.on_event = self._event
                self.conns[i] = conn
                self.rec.count("connected")
                if subscribe:
                    for room in user.get("subscribe", ()):
                        t1 = _now()
                        try:
                            await conn.call("join", room=room)
                        except Exception:
                            self.rec.count("join_failed")
                            continue
                        self.rec.record_us("join", (_now() - t1) / 1000)
                        self.rec.count("joins")

        await asyncio.gather(*(one(i, u) for i, u in enumerate(self.users)))
        return {"connected": sum(c is not None for c in self.conns), "failed": failures}

    async def cmd_disconnect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        closing = [c for c in self.conns if c is not None]
        for conn in closing:
            conn.close()
        for conn in closing:
            try:
                async with asyncio.timeout(10):
                    await conn.lost
            except TimeoutError:
                pass
        self.rec.count("disconnected", len(closing))
        self.conns = []
        self._events_seen = 0
        return {}

    async def cmd_idle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(cmd["duration"]))
        return {}

    async def cmd_run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        duration = float(cmd["duration"])
        tasks = []
        self.active = True
        if cmd.get("post"):
            tasks.append(self._posting(duration, cmd["post"]))
        if cmd.get("join"):
            tasks.append(self._joining(duration, cmd["join"]))
        if cmd.get("ping_interval"):
            tasks.append(self._pinging(duration, float(cmd["ping_interval"])))
        if not tasks:
            tasks.append(asyncio.sleep(duration))
        await asyncio.gather(*tasks)
        # Let what is in flight arrive (deliveries of the last posts), then stop counting.
        await asyncio.sleep(float(cmd.get("drain", 0.5)))
        self.active = False
        return {}

    # -- posting --------------------------------------------------------------------------------

    def _posters(self) -> list[tuple[Lean, dict[str, Any]]]:
        return [
            (c, u)
            for c, u in zip(self.conns, self.users, strict=False)
            if c is not None and u.get("post")
        ]

    async def _posting(self, duration: float, spec: dict[str, Any]) -> None:
        posters = self._posters()
        if not posters:
            await asyncio.sleep(duration)
            return
        window = int(spec.get("window", 16))
        rate = spec.get("rate")  # this worker's posts per second; None: closed loop
        members = spec.get("members", {})
        rec = self.rec
        pad = self.text_pad
        cids = self._cids
        state = {"open": True}
        rng = random.Random(self.index)

        def send(conn: Lean, user: dict[str, Any], t0: int) -> None:
            room = user["post"][rng.randrange(len(user["post"]))]
            conn.in_flight += 1
            conn.send(
                "post",
                lambda reply, t, conn=conn, user=user, room=room: acked(reply, t, conn, user, room),
                t0,
                room=room,
                text=f"{t0} {pad}",
                cid=f"w{self.index}-{next(cids)}",
            )
            rec.count("sent")

        def acked(
            reply: dict[str, Any], t0: int, conn: Lean, user: dict[str, Any], room: int
        ) -> None:
            conn.in_flight -= 1
            if reply.get("ok"):
                rec.count("acked")
                rec.record_us("ack", (_now() - t0) / 1000)
                n = members.get(str(room))
                if n:
                    rec.count("expected", n)
            else:
                rec.count("err_" + str((reply.get("error") or {}).get("code")))
            if (
                rate is None
                and state["open"]
                and conn.transport
                and not conn.transport.is_closing()
            ):
                send(conn, user, _now())

        if rate is None:
            for conn, user in posters:
                for _ in range(window):
                    send(conn, user, _now())
            await asyncio.sleep(duration)
            state["open"] = False
            return
        interval_ns = 1e9 / float(rate)
        start = _now()
        end = start + int(duration * 1e9)
        sent = 0
        cycle = itertools.cycle(posters)
        while True:
            now = _now()
            if now >= end:
                break
            due = int((now - start) / interval_ns) + 1
            while sent < due:
                intended = start + int(sent * interval_ns)
                for _ in range(len(posters)):
                    conn, user = next(cycle)
                    if conn.in_flight < window:
                        send(conn, user, intended)
                        break
                else:
                    rec.count("skipped")  # every connection at its window: the server lags
                sent += 1
            await asyncio.sleep(0.002)
        state["open"] = False

    # -- joining --------------------------------------------------------------------------------

    async def _joining(self, duration: float, spec: dict[str, Any]) -> None:
        joiners = [
            (c, u)
            for c, u in zip(self.conns, self.users, strict=False)
            if c is not None and u.get("join")
        ]
        if not joiners:
            await asyncio.sleep(duration)
            return
        rate = spec.get("rate")
        backchat = int(spec.get("backchat", 0))
        rec = self.rec
        rng = random.Random(1000 + self.index)
        state = {"open": True}

        def send(conn: Lean, user: dict[str, Any], t0: int) -> None:
            room = user["join"][rng.randrange(len(user["join"]))]
            conn.in_flight += 1
            conn.send(
                "join", lambda reply, t, c=conn, u=user: joined(reply, t, c, u), t0, room=room
            )

        def joined(reply: dict[str, Any], t0: int, conn: Lean, user: dict[str, Any]) -> None:
            conn.in_flight -= 1
            if reply.get("ok"):
                rec.count("joins")
                rec.record_us("join", (_now() - t0) / 1000)
                if backchat and len(reply.get("messages", ())) >= backchat:
                    rec.count("backchat_full")
            else:
                rec.count("err_join_" + str((reply.get("error") or {}).get("code")))
            if (
                rate is None
                and state["open"]
                and conn.transport
                and not conn.transport.is_closing()
            ):
                send(conn, user, _now())

        if rate is None:
            for conn, user in joiners:
                send(conn, user, _now())
            await asyncio.sleep(duration)
            state["open"] = False
            return
        interval_ns = 1e9 / float(rate)
        start = _now()
        end = start + int(duration * 1e9)
        sent = 0
        cycle = itertools.cycle(joiners)
        while _now() < end:
            due = int((_now() - start) / interval_ns) + 1
            while sent < due:
                conn, user = next(cycle)
                send(conn, user, start + int(sent * interval_ns))
                sent += 1
            await asyncio.sleep(0.002)
        state["open"] = False

    # -- keep-alive -----------------------------------------------------------------------------

    async def _pinging(self, duration: float, interval: float) -> None:
        conns = [c for c in self.conns if c is not None]
        if not conns:
            await asyncio.sleep(duration)
            return
        rec = self.rec

        def pong(reply: dict[str, Any], t0: int) -> None:
            rec.count("pongs")
            rec.record_us("ping", (_now() - t0) / 1000)

        # Every connection pings once per interval, spread evenly over it.
        start = time.monotonic()
        end = start + duration
        step = interval / len(conns)
        i = 0
        while time.monotonic() < end:
            due = int((time.monotonic() - start) / step) + 1
            while i < due:
                conn = conns[i % len(conns)]
                if conn.transport is not None and not conn.transport.is_closing():
                    conn.send("ping", pong)
                    rec.count("pings")
                i += 1
            await asyncio.sleep(0.01)
