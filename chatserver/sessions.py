"""A client session: the protocol state of one connection, whatever its transport.

The transport hands every decoded map to :meth:`Session.receive`. Requests are served one at a
time, in order, by a task that exists only while requests are waiting (an idle connection holds no
task). A ``post`` does not hold the line while its transaction commits: the reply is sent from the
write's completion callback, so a client may pipeline posts and they are stored in the order sent.

States: ``new`` (only ``hello`` and ``ping``) → ``hello`` (``auth``, ``ping``) → ``authenticated``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from . import PROTOCOL_VERSION, __version__
from .governance_ops import GovernanceOps
from .lifecycle_ops import LifecycleOps
from .logs import CONN_ID, REQUEST_ID
from .protocol import commands as cmd
from .protocol.errors import (
    BAD_REQUEST,
    INTERNAL,
    UNAUTHENTICATED,
    UNAVAILABLE,
    ChatError,
    ProtocolError,
    RetryLater,
)
from .protocol.events import Outgoing, Resync, RoomRemoved, error_reply, reply
from .rooms.capture import acting_as
from .rooms.unread import MENTIONS_PAGE_DEFAULT, MENTIONS_PAGE_MAX
from .services import Link, Services
from .store.messages import Stored
from .store.users import User
from .throttle import Source

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class Session(GovernanceOps, LifecycleOps):
    __slots__ = (
        "__weakref__",
        "_ending",
        "_joining",
        "_posts_drained",
        "_posts_in_flight",
        "_queue",
        "closed",
        "conn",
        "invited_rooms",
        "rooms",
        "said_hello",
        "services",
        "token_hash",
        "user",
        "worker",
    )

    def __init__(self, services: Services, conn: Link) -> None:
        self.services = services
        self.conn = conn
        self.said_hello = False
        self.user: User | None = None
        # The hash of the token this session authenticated with (what a revocation names).
        self.token_hash: str | None = None
        self.rooms: set[int] = set()
        # Requests waiting for the worker; made when one arrives and dropped when served (an
        # empty deque is ~600 bytes on each of thousands of idle connections).
        self._queue: deque[dict[str, Any]] | None = None
        self.worker: asyncio.Task[None] | None = None
        self._posts_in_flight = 0
        # Made only when ``end()`` must wait for acknowledgements in flight.
        self._posts_drained: asyncio.Event | None = None
        self.invited_rooms: set[int] = set()
        # Rooms whose join is being served -> the event that stopped them meanwhile, if any.
        self._joining: dict[int, Outgoing | None] = {}
        self._ending: tuple[ChatError, str] | None = None
        self.closed = False

    # -- input ------------------------------------------------------------------------------

    def receive(self, obj: dict[str, Any]) -> None:
        if self.closed or self._ending is not None:
            return
        if self.worker is None:
            # Nothing is waiting before this request: the common ones need no task.
            op = obj.get("op")
            if op == "post" and self.user is not None:
                if self._post_inline(obj):
                    return
            elif op == "ping" and not self._posts_in_flight:
                # Keep-alives are answered at once.
                try:
                    request = cmd.parse_request(obj)
                except ChatError:
                    pass  # the worker answers with the error, in order
                else:
                    self.conn.send(Outgoing(reply(request.id)))
                    return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(obj)
        limits = self.services.limits
        if len(self._queue) + self._posts_in_flight >= limits.max_requests_in_flight:
            self.conn.pause_reading()
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    def reject(self, error: ChatError) -> None:
        """A frame could not be decoded; tell the client (with the request's id when the frame
        was parsed far enough to read one)."""
        rid = error.request_id if isinstance(error, ProtocolError) else None
        self.conn.send(Outgoing(error_reply(rid, error.code, error.message)))

    def end(self, error: ChatError, reason: str) -> None:
        """The input cannot be trusted any more: answer what came before, then ``error`` (with
        ``re: null``), then ``bye`` with ``reason``, and close."""
        self.conn.pause_reading()
        self._ending = (error, reason)
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        CONN_ID.set(getattr(self.conn, "id", None))  # this task's log lines name the connection
        try:
            while self._queue and not self.closed:
                obj = self._queue.popleft()
                response = await self._serve(obj)
                if response is not None:
                    self.conn.send(Outgoing(response))
                self._maybe_resume_reading()
            if self._ending is not None and not self.closed:
                error, reason = self._ending
                if self._posts_in_flight:  # their acknowledgements come first
                    self._posts_drained = asyncio.Event()
                    await self._posts_drained.wait()
                self.reject(error)
                self.conn.close(reason)
        finally:
            self.worker = None
            if not self._queue:
                self._queue = None

    def _maybe_resume_reading(self) -> None:
        if self._ending is not None:
            return
        limits = self.services.limits
        queued = len(self._queue) if self._queue is not None else 0
        if queued + self._posts_in_flight < limits.max_requests_in_flight // 2 + 1:
            self.conn.resume_reading()

    async def _serve(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        rid = cmd.request_id(obj)
        REQUEST_ID.set(rid)
        try:
            request = cmd.parse_request(obj)
            return await self._dispatch(request)
        except RetryLater as exc:
            return {**error_reply(rid, exc.code, exc.message), "retry_after": exc.retry_after}
        except ChatError as exc:
            return error_reply(rid, exc.code, exc.message)
        except Exception:
            log.exception("op %r failed", obj.get("op"))
            self.services.metrics.request_errors += 1
            return error_reply(rid, INTERNAL, "internal error")

    async def _dispatch(self, request: cmd.Request) -> dict[str, Any] | None:
        if not self.said_hello and not isinstance(request, cmd.Hello | cmd.Ping):
            raise ChatError(BAD_REQUEST, "hello must come first")
        if self.user is None and not request.PUBLIC:
            raise ChatError(UNAUTHENTICATED, "authenticate first")
        if self.user is not None:
            acting_as(self.user.id)  # compliance events name who made a change
        handler = getattr(self, "op_" + request.OP.replace(".", "_"))
        return await handler(request)  # type: ignore[no-any-return]

    # -- ops --------------------------------------------------------------------------------

    async def op_hello(self, request: cmd.Hello) -> dict[str, Any] | None:
        if request.protocol != PROTOCOL_VERSION:
            raise ChatError(BAD_REQUEST, f"this server speaks protocol {PROTOCOL_VERSION}")
        pool = self.services.admission
        extra: dict[str, Any] = {}
        if pool is not None:
            refused = pool.refusal()
            if refused is not None:
                # A standby or draining node: say where the active nodes are, and close.
                refusal = error_reply(request.id, UNAVAILABLE, refused)
                self.conn.send(Outgoing({**refusal, "active": pool.active_nodes()}))
                self.conn.close("unavailable")
                return None
            extra["pool"] = pool.hello_info()
        self.said_hello = True
        chat = self.services.settings.chat
        return reply(
            request.id,
            **extra,
            server=f"chatserver/{__version__}",
            protocol=PROTOCOL_VERSION,
            node=self.services.node_name,
            limits={
                "max_frame_bytes": self.services.limits.max_frame_bytes,
                "max_message_chars": chat.max_message_chars,
                "default_chat_history": chat.default_chat_history,
                "history_page_max": chat.history_page_max,
                "max_file_size_kb": chat.max_file_size_kb,
                "participant_update_limit": chat.participant_update_limit,
                "posts_per_user_per_s": self.services.limits.posts_per_user_per_s,
            },
            room_management_url=chat.room_management_url,
            http_url=self.services.http_url(),
        )

    def _source(self) -> Source:
        peer = self.conn.peer
        host = peer.rpartition(":")[0] if ":" in peer else peer
        return Source(host, self.conn.transport_name)

    async def op_auth(self, request: cmd.Auth) -> dict[str, Any]:
        if self.user is not None:
            raise ChatError(BAD_REQUEST, "already authenticated")
        accounts = self.services.accounts
        if request.token is not None:
            signed = await accounts.resume(request.token, self._source())
        else:
            assert request.user is not None and request.password is not None
            signed = await accounts.login(request.user, request.password, self._source())
        if self.closed:
            return None  # type: ignore[return-value]
        user = self.user = signed.user
        self.token_hash = signed.token_hash
        self.services.presence.add(user.id, self)
        self.conn.authenticated(user)
        if self.services.feeds is not None:
            await self.services.feeds.online(user)
        invitations = await self._gov.invitations(user)
        self.invited_rooms = {i["room"]["id"] for i in invitations}
        return reply(request.id, user=user.public(), token=signed.token, invitations=invitations)

    async def op_logout(self, request: cmd.Logout) -> None:
        assert self.user is not None
        if self.token_hash is None:  # a second logout pipelined behind the first
            raise ChatError(UNAUTHENTICATED, "logged out")
        # This connection is not closed with the others using the token: it gets its reply
        # first, then ``bye`` ``logged_out``.
        token_hash, self.token_hash = self.token_hash, None
        try:
            await self.services.accounts.logout(self.user, token_hash)
        except BaseException:
            self.token_hash = token_hash
            raise
        if not self.closed:
            self.conn.send(Outgoing(reply(request.id)))
            self.conn.close("logged_out")

    async def op_password_change(self, request: cmd.PasswordChange) -> dict[str, Any]:
        assert self.user is not None
        await self.services.accounts.change_password(
            self.user, self.token_hash, request.password, request.new_password, self._source()
        )
        return reply(request.id)

    async def op_ping(self, request: cmd.Ping) -> dict[str, Any]:
        return reply(request.id)

    async def op_rooms(self, request: cmd.Rooms) -> dict[str, Any]:
        assert self.user is not None
        rooms, cursor = await self.services.directory.list_rooms(
            self.user, request.query, request.limit, request.cursor, request.category
        )
        await self.services.unread.annotate(self.user, rooms)
        return reply(request.id, rooms=rooms, cursor=cursor)

    async def op_join(self, request: cmd.Join) -> dict[str, Any] | None:
        assert self.user is not None
        room = request.room
        if room in self.invited_rooms:
            # Spent before the reply, so that no connection of the user lists it after the
            # reply; and only by a join that will be served (the right to read is checked).
            await self.services.reading.readable(self.user, room)
            self.invited_rooms.discard(room)
            await self._gov.invitation_used(self.user, room)
        self._joining[room] = None
        try:
            fields, release = await self.services.reading.join(self.user, self, room, request.since)
        finally:
            interrupted = self._joining.pop(room, None)
        if self.closed:
            self.services.reading.leave(self, room)
            return None
        try:
            counts = await self.services.unread.counts(self.user, {room: fields["last_seq"]})
        except BaseException:
            self.services.reading.leave(self, room)
            raise
        fields["unread"], fields["mentions"] = counts.get(room, (0, 0))
        if self.services.lifecycle is not None:  # what the client may offer: Edit, Delete
            try:
                fields.update(await self.services.lifecycle.edit_policy(room))
            except BaseException:
                self.services.reading.leave(self, room)
                raise
        if request.changes is not None and self.services.lifecycle is not None:
            # After subscribing: a change committed meanwhile is here or comes live (or both;
            # a change says the state now, so twice is harmless).
            try:
                fields.update(
                    await self.services.lifecycle.changes(
                        self.user, room, request.changes, request.since or fields["last_seq"]
                    )
                )
            except BaseException:
                self.services.reading.leave(self, room)
                raise
        self.conn.send(Outgoing(reply(request.id, **fields)))
        if interrupted is not None:
            # Live delivery stopped while the reply was being made: say so after the reply.
            self.conn.send(interrupted)
        else:
            entered = room not in self.rooms
            self.rooms.add(room)
            if release is not None:
                release()
            if entered and self.services.roster is not None:
                self.services.roster.enter(room, self.user.id, self.user.name)
        return None

    async def op_leave(self, request: cmd.Leave) -> dict[str, Any]:
        if request.room in self.rooms:
            self._roster_exit(request.room)
        self.rooms.discard(request.room)
        self.services.reading.leave(self, request.room)
        return reply(request.id)

    async def op_room_participants(self, request: cmd.RoomParticipants) -> dict[str, Any]:
        assert self.user is not None
        room = await self.services.reading.readable(self.user, request.room)
        roster = self.services.roster
        if roster is None:
            raise ChatError(UNAVAILABLE, "no participant roster on this node")
        return reply(request.id, **roster.listing(room))

    def _roster_exit(self, room: int) -> None:
        if self.services.roster is not None and self.user is not None:
            self.services.roster.exit(room, self.user.id)

    async def op_history(self, request: cmd.History) -> dict[str, Any]:
        assert self.user is not None
        messages, more = await self.services.reading.history(
            self.user, request.room, request.before, request.after, request.limit, request.around
        )
        return reply(request.id, messages=messages, more=more)

    async def op_users_lookup(self, request: cmd.UsersLookup) -> dict[str, Any]:
        assert self.user is not None
        found = await self.services.reading.senders(self.user, request.room, request.ids)
        return reply(request.id, users=found)

    async def op_search(self, request: cmd.Search) -> dict[str, Any]:
        assert self.user is not None and self.services.search is not None
        started = time.perf_counter()
        try:
            hits, cursor = await self.services.search.search(
                self.user,
                request.query,
                room=request.room,
                order=request.order,
                cursor=request.cursor,
                limit=request.limit,
            )
        finally:
            self.services.metrics.search_latency.observe(time.perf_counter() - started)
        return reply(request.id, hits=hits, cursor=cursor)

    async def op_feed_add(self, request: cmd.FeedAdd) -> dict[str, Any]:
        assert self.user is not None and self.services.feeds is not None
        feed = await self.services.feeds.add(self.user, request.name, request.query)
        return reply(request.id, feed=feed)

    async def op_feed_list(self, request: cmd.FeedList) -> dict[str, Any]:
        assert self.user is not None and self.services.feeds is not None
        return reply(request.id, feeds=await self.services.feeds.saved(self.user))

    async def op_feed_remove(self, request: cmd.FeedRemove) -> dict[str, Any]:
        assert self.user is not None and self.services.feeds is not None
        await self.services.feeds.remove(self.user, request.feed)
        return reply(request.id)

    async def op_feed_history(self, request: cmd.FeedHistory) -> dict[str, Any]:
        assert self.user is not None and self.services.feeds is not None
        feed, hits, cursor = await self.services.feeds.history(
            self.user, request.feed, request.cursor, request.limit
        )
        return reply(request.id, feed=feed, hits=hits, cursor=cursor)

    async def op_read(self, request: cmd.Read) -> dict[str, Any]:
        assert self.user is not None
        seq = await self.services.unread.mark(self.user, request.room, request.seq, self)
        return reply(request.id, room=request.room, seq=seq)

    async def op_mentions(self, request: cmd.Mentions) -> dict[str, Any]:
        assert self.user is not None
        limit = min(request.limit or MENTIONS_PAGE_DEFAULT, MENTIONS_PAGE_MAX)
        mentions, cursor = await self.services.unread.mention_page(
            self.user, request.room, request.cursor, limit
        )
        return reply(request.id, mentions=mentions, cursor=cursor)

    def _post_inline(self, obj: dict[str, Any]) -> bool:
        """Queue a post for the group commit without a worker task, when the right to post is
        cached; ``False`` leaves the request to the worker (which also answers a malformed one)."""
        assert self.user is not None
        try:
            request = cmd.parse_request(obj)
        except ChatError:
            return False
        if not isinstance(request, cmd.Post) or request.reply_to is not None:
            return False  # a reply's seq is checked with an await: the worker serves it
        metrics = self.services.metrics
        started = time.perf_counter()
        try:
            future = self.services.posting.post_now(
                self.user, request.room, request.text, request.cid
            )
        except ChatError as exc:
            # Answered here (nothing of this connection is waiting before it): handing it to the
            # worker would run the checks, and take a rate-limit token, a second time.
            metrics.posts_received += 1
            metrics.post_rejected(exc.code)
            self.conn.send(Outgoing(error_reply(request.id, exc.code, exc.message)))
            return True
        if future is None:
            return False
        metrics.posts_received += 1
        self._await_post(request, future, started)
        limits = self.services.limits
        if self._posts_in_flight >= limits.max_requests_in_flight:
            self.conn.pause_reading()
        return True

    async def op_post(self, request: cmd.Post) -> None:
        assert self.user is not None
        metrics = self.services.metrics
        metrics.posts_received += 1
        started = time.perf_counter()
        try:
            future = await self.services.posting.post(
                self.user, request.room, request.text, request.cid, request.reply_to
            )
        except ChatError as exc:
            metrics.post_rejected(exc.code)
            raise
        self._await_post(request, future, started)

    def _await_post(
        self, request: cmd.Post, future: asyncio.Future[Stored], started: float
    ) -> None:
        """Acknowledge the post (or say why it failed) when its batch has committed."""
        metrics = self.services.metrics
        self._posts_in_flight += 1
        rid = request.id

        def done(f: asyncio.Future[Stored]) -> None:
            self._posts_in_flight -= 1
            if not self._posts_in_flight and self._posts_drained is not None:
                self._posts_drained.set()
            self._maybe_resume_reading()
            if f.cancelled():
                response = error_reply(rid, INTERNAL, "the post was cancelled")
                metrics.post_rejected(INTERNAL)
            elif (exc := f.exception()) is not None:
                if isinstance(exc, ChatError):
                    response = error_reply(rid, exc.code, exc.message)
                    metrics.post_rejected(exc.code)
                else:
                    response = error_reply(rid, INTERNAL, "internal error")
                    metrics.post_rejected(INTERNAL)
            else:
                stored = f.result()
                if stored.message is None:
                    response = error_reply(rid, "not_found", f"no room {request.room}")
                    metrics.post_rejected("not_found")
                else:
                    response = reply(
                        rid,
                        seq=stored.message.seq,
                        ts=stored.message.ts,
                        duplicate=stored.duplicate,
                    )
            if not self.closed:
                self.conn.send(Outgoing(response))
            metrics.post_ack.observe(time.perf_counter() - started)

        future.add_done_callback(done)

    # -- subscriber interface (called by the hub) -------------------------------------------

    def send(self, item: Outgoing) -> None:
        self.conn.send(item)

    def resync(self, room: int, reason: str) -> None:
        """Live delivery of ``room`` stopped for this connection; the client rejoins with since."""
        self.services.metrics.resyncs += 1
        self._stop(room, Outgoing.event(Resync(room, reason)))

    def removed(self, room: int, reason: str) -> None:
        """The user lost the right to read ``room`` (or it was disabled or deleted)."""
        self._stop(room, Outgoing.event(RoomRemoved(room, reason)))

    def _stop(self, room: int, event: Outgoing) -> None:
        if room in self.rooms:
            self._roster_exit(room)
        self.rooms.discard(room)
        self.services.reading.leave(self, room)
        if room in self._joining:
            self._joining[room] = event  # sent by op_join after its reply
        else:
            self.conn.send(event)

    def disconnect(self, reason: str) -> None:
        self.conn.close(reason)

    def fall_behind(self) -> None:
        """The connection's output passed its limit: stop every room's live events."""
        for room in list(self.rooms):
            self.resync(room, "too_slow")

    # -- end --------------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.user is not None:
            self.services.presence.remove(self.user.id, self)
            if self.services.feeds is not None:
                self.services.feeds.offline(self.user.id)
        for room in self.rooms:
            self._roster_exit(room)
            self.services.reading.leave(self, room)
        self.rooms.clear()
        self._queue = None
