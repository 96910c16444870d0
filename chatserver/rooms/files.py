"""Files in rooms: upload, download and removal, with the same rights as posting and reading.

Every transport calls these (today the client HTTP listener, :mod:`chatserver.transport.http`);
the bytes move through :mod:`chatserver.store.files`. The checks, in the order they run:

upload    the text and name, the right to post (:class:`Authorization`), the category's
          ``file_upload`` switch, uploads in progress on the node, the user's upload rate, the
          room's quota; then the body is read chunk by chunk, never more than the smaller of
          ``max_file_size_kb`` and what the quota leaves (the reader stops there: the caller
          gets :class:`TooLarge` or :class:`StorageFull` without the rest being read), at no
          less than ``min_upload_kb_per_s`` on average once ``min_upload_grace_s`` passed,
          hashed while it streams into the storage backend (:mod:`chatserver.store.blobs`),
          compared with the checksum the client expects, and only then is the file made
          visible, with its message, in one transaction. Anything that fails or is cancelled on
          the way (the client went away) deletes what was stored.
dedup     with ``[files] dedup``, a file whose bytes (SHA-256 and size) a ready file has
          already stored shares that blob, decided when it commits: every upload is read,
          hashed and stored whole all the same, its answer and its id are those of any upload,
          and its own copy is deleted 1 to 5 s after the answer (at random), so neither what an
          uploader sees nor how long it takes tells whether someone uploaded the bytes before.
download  the file and the right to read its room, looked up the same way whatever the
          outcome: a file of a room the caller may not read answers exactly like a file that
          does not exist (``not_found``, same message, the same store reads).
remove    the right to read (else ``not_found``), then the uploader, a room manager or an
          administrator; the message becomes a tombstone (``message.changed`` to the room).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from ..config import FilesConfig
from ..protocol.errors import (
    BAD_REQUEST,
    FORBIDDEN,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_LARGE,
    UNAVAILABLE,
    ChatError,
)
from ..protocol.text import check_text
from ..store import files as file_store
from ..store.blobs import BlobStore, BlobWriter, TableBlobs, open_blobs
from ..store.db import Database, now_ms
from ..store.files import StoredFile
from ..store.messages import Message, last_seq
from ..store.rooms import NO_ROOM
from ..store.users import User
from .authorization import Authorization
from .capture import Capture
from .changes import MessageChange, MessagesChanged, Publisher
from .facts import Facts
from .media import SNIFF_BYTES, file_name, sniff
from .ratelimit import RateLimiter
from .settings import RuntimeSettings

log = logging.getLogger(__name__)

NO_FILE = "no such file"  # the one answer for a missing file and one the caller may not read
# Chunk writes (and, apart, chunk reads) in flight on the node at once: on PostgreSQL they use
# the store's small asyncpg pool, which the group commit needs too, so they never take it all.
STORE_SLOTS = 2
# An upload's own transactions (the room's usage, its start, its finish) running on the node at
# once: 50 uploads finishing together would otherwise fill the event loop's queue between two
# steps of every chat post (the store's CPU per transaction is small; the loop's is not).
BOOKKEEPING_SLOTS = 2
# Chat first: a chunk write to the content store waits this long at most while a group commit
# of posts is queued or in flight (the two would share the store's CPU and WAL flush).
CHAT_FIRST_S = 0.02
# A deduplicated upload's own copy is deleted this many seconds after its answer (uniformly).
DROP_AFTER_S = (1.0, 5.0)
_jitter = random.SystemRandom()
# While at most FEW_UPLOADS run on the node, one upload keeps the backend's writes_ahead chunk
# writes in flight (else one).
FEW_UPLOADS = 2


class StorageError(Exception):
    """The configured storage backend cannot be used (at the node's start)."""


class TooLarge(ChatError):
    """The upload passes ``max_file_size_kb``."""

    def __init__(self, limit: int) -> None:
        super().__init__(TOO_LARGE, f"the file exceeds max_file_size_kb={limit // 1024}")


class StorageFull(ChatError):
    """The upload passes what the room's quota leaves."""

    def __init__(self, message: str) -> None:
        super().__init__(TOO_LARGE, message)


@dataclass(frozen=True, slots=True)
class Upload:
    """What a client sends with an upload's bytes."""

    room: int
    name: str
    text: str = ""
    sha256: str | None = None  # the checksum the client expects (hex), if any
    size: int | None = None  # the size the client declares (Content-Length), if any


# Reads up to n bytes of the body; b"" at its end; ConnectionError when it is cut off.
BodyReader = Callable[[int], Awaitable[bytes]]


class Files:
    def __init__(
        self,
        db: Database,
        config: FilesConfig,
        node: str,
        settings: RuntimeSettings,
        facts: Facts,
        auth: Authorization,
        capture: Capture,
        deliver: Callable[[list[Message]], None],
        publisher: Publisher,
        messages_changed: Callable[[MessagesChanged], None],
        chat_quiet: asyncio.Event | None = None,
    ) -> None:
        self._db = db
        self._config = config
        self._node = node
        self._settings = settings
        self._facts = facts
        self._auth = auth
        self._capture = capture
        self._deliver = deliver
        self._publisher = publisher
        self._messages_changed = messages_changed
        self._chat_quiet = chat_quiet  # the writer's: no group commit queued or in flight
        per_min = config.uploads_per_user_per_min
        self._rate = RateLimiter(per_min / 60, burst=max(per_min, 1.0))
        self.chunk_size = config.chunk_kb * 1024
        self._writes = asyncio.Semaphore(STORE_SLOTS)
        self._reads = asyncio.Semaphore(STORE_SLOTS)
        self._books = asyncio.Semaphore(BOOKKEEPING_SLOTS)
        self.blobs: BlobStore = TableBlobs(db, self._reads)  # until start() opens another
        self._dropping: set[asyncio.Task[None]] = set()
        self.uploading = 0
        self._by_user: dict[int, int] = {}  # uploads in progress per user
        self._sweeper: asyncio.Task[None] | None = None
        # Observations (metrics, tests).
        self.uploaded = 0
        self.uploaded_bytes = 0
        self.refused = 0
        self.downloads = 0
        self.downloaded_bytes = 0  # bytes sent to downloaders

    # -- upload -----------------------------------------------------------------------------

    async def upload(self, user: User, upload: Upload, read: BodyReader) -> Message:
        """Store the file ``read`` yields and its message; see the module docstring."""
        chat = self._settings.chat
        check_text(upload.text, "text")
        if len(upload.text) > chat.max_message_chars:
            raise ChatError(TOO_LARGE, f"text exceeds max_message_chars={chat.max_message_chars}")
        name = file_name(upload.name)
        expected = _expected_sha256(upload.sha256)
        _room, category, _actor = await self._auth.check(user, upload.room, "post")
        if not category.file_upload:
            raise self._refuse(
                user,
                upload.room,
                ChatError(FORBIDDEN, "file uploads are switched off in this room's category"),
            )
        if self.uploading >= self._config.max_concurrent_uploads:
            raise self._refuse(
                user, upload.room, ChatError(UNAVAILABLE, "too many uploads in progress; retry")
            )
        mine = self._by_user.get(user.id, 0)
        if mine >= self._config.max_uploads_per_user:
            raise self._refuse(
                user,
                upload.room,
                ChatError(
                    RATE_LIMITED,
                    f"{mine} uploads of yours are in progress; finish one first",
                ),
            )
        if not self._rate.allow(user.id):
            raise self._refuse(
                user, upload.room, ChatError(RATE_LIMITED, "too many uploads; slow down")
            )
        # The slot is taken before the next await, so concurrent requests cannot all pass.
        self.uploading += 1
        self._by_user[user.id] = mine + 1
        try:
            return await self._limited(user, upload, name, expected, read)
        finally:
            self.uploading -= 1
            left = self._by_user.pop(user.id, 1) - 1
            if left:
                self._by_user[user.id] = left

    async def _limited(
        self, user: User, upload: Upload, name: str, expected: str | None, read: BodyReader
    ) -> Message:
        """The size limit and the quota, then the upload."""
        max_size = self._settings.chat.max_file_size_kb * 1024
        quota = self._config.room_quota_mb * 1024 * 1024 or None
        limit, full = max_size, cast(ChatError, TooLarge(max_size))
        if quota is not None:
            async with self._books:
                used = await file_store.room_usage(self._db, upload.room)
            left = quota - used
            if left < limit:
                limit = max(left, 0)
                full = StorageFull(
                    f"the room's files would pass its quota of {self._config.room_quota_mb} MiB"
                    f" ({max(left, 0)} bytes left)"
                )
        if upload.size is not None and upload.size > limit:
            raise self._refuse(user, upload.room, full)
        return await self._store(
            user, upload.room, name, upload.text, expected, read, (limit, full, quota)
        )

    async def _store(
        self,
        user: User,
        room: int,
        name: str,
        text: str,
        expected: str | None,
        read: BodyReader,
        limits: tuple[int, ChatError, int | None],
    ) -> Message:
        limit, full, quota = limits
        async with self._books:
            file_id = await file_store.begin(
                self._db, room, user.id, name, self.chunk_size, self._node
            )
        writer = self.blobs.writer(file_id, self.chunk_size)
        try:
            try:
                size, digest, head = await self._stream(writer, read, limit, full)
                if expected is not None and digest != expected:
                    raise ChatError(
                        BAD_REQUEST,
                        f"the file's SHA-256 is {digest}, not the {expected} the client sent",
                    )
                await writer.finish()
                async with self._books:
                    message, drop = await file_store.finish(
                        self._db,
                        file_id,
                        media_type=sniff(head),
                        size=size,
                        sha256=digest,
                        text=text,
                        sender_name=user.name,
                        quota=quota,
                        capture=self._capture.node,
                        dedup=self._config.dedup,
                    )
            except file_store.QuotaExceeded as exc:
                raise StorageFull(f"the room's files would pass its quota ({exc})") from None
            except file_store.UploadLost as exc:
                # (a deleted room takes its pending uploads with it)
                if exc.room_gone or await last_seq(self._db, room) is None:
                    raise ChatError(NOT_FOUND, f"no room {room}") from None
                raise ChatError(
                    UNAVAILABLE,
                    "the upload outlasted files.pending_timeout_s and was swept; upload again",
                ) from None
        except BaseException as exc:
            # Nothing of a failed upload stays (the client went away, too large, …); shielded,
            # so a cancelled request still cleans up.
            await asyncio.shield(self._abandon(file_id, writer))
            if isinstance(exc, ChatError):
                self._refuse(user, room, exc)
            raise
        self.uploaded += 1
        self.uploaded_bytes += size
        if drop is not None:  # its bytes are another blob's: its own copy goes, later
            task = asyncio.get_running_loop().create_task(self._drop_later(drop))
            self._dropping.add(task)
            task.add_done_callback(self._dropping.discard)
        log.info("file %d (%d bytes) uploaded to room %d by user %d", file_id, size, room, user.id)
        for tell in (self._deliver, self._publisher.publish_messages):
            try:
                tell([message])
            except Exception:
                log.exception("delivering file %d's message failed", file_id)
        return message

    async def _stream(
        self, writer: BlobWriter, read: BodyReader, limit: int, full: ChatError
    ) -> tuple[int, str, bytes]:
        """Store the body in chunks; (size, SHA-256 hex, its first bytes). While few uploads
        run, full chunks are written while the next ones are read (up to four chunks in memory);
        when many do, each chunk is written before the next is read (one chunk in memory: the
        client waits in its socket's buffers, not in the node's memory)."""
        chunk_size = self.chunk_size
        pace = _Pace(self._config)
        hasher = hashlib.sha256()
        pieces: list[bytes] = []  # the chunk being read, as it came (joined once, when full)
        held = 0
        head = b""
        size = index = 0
        writing: deque[asyncio.Task[None]] = deque()
        # Chunk writes in flight for this upload while it reads the next chunk: a few while few
        # uploads run (one upload gets the store's throughput), none when many do (the store's
        # write slots are busy anyway: reading ahead would only hold chunks in memory).
        depth = self.blobs.writes_ahead if self.uploading <= FEW_UPLOADS else 0
        loop = asyncio.get_running_loop()
        try:
            while True:
                want = min(chunk_size - held, limit + 1 - size)
                try:
                    async with asyncio.timeout_at(pace.deadline(size)):
                        data = await read(max(want, 1))
                except TimeoutError:
                    raise pace.failure(size) from None
                except ConnectionError as exc:
                    raise ChatError(BAD_REQUEST, f"the body was cut off ({exc})") from None
                size += len(data)
                if size > limit:
                    raise full
                if data:
                    pieces.append(data)
                    held += len(data)
                    if len(head) < SNIFF_BYTES:
                        head += data[: SNIFF_BYTES - len(head)]
                if held >= chunk_size or (not data and held):
                    while writing and len(writing) >= depth:
                        await writing.popleft()
                    # (hashed on the loop: a worker thread measured no better on 2 shared
                    # cores, and a GIL handover stalled the loop longer; loadtest/RESULTS.md)
                    chunk = _join_hash(hasher, pieces)
                    pieces = []
                    held = 0
                    writing.append(loop.create_task(self._put(writer, index, chunk)))
                    del chunk
                    index += 1
                    if not depth:
                        await writing.popleft()
                if not data:
                    while writing:
                        await writing.popleft()
                    return size, hasher.hexdigest(), head
        finally:
            # A failed upload deletes its chunks after its last writes have ended, not during
            # (and their outcomes are collected: a second failure is not left unretrieved).
            if writing:
                await asyncio.gather(*map(asyncio.shield, writing), return_exceptions=True)

    async def _put(self, writer: BlobWriter, index: int, data: bytes) -> None:
        async with self._writes:
            quiet = self._chat_quiet
            if quiet is not None and not quiet.is_set() and self.blobs.in_database:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHAT_FIRST_S):
                        await quiet.wait()
            await writer.write(index, data)

    async def _abandon(self, file_id: int, writer: BlobWriter) -> None:
        try:
            await writer.abort()
            await file_store.abandon(self._db, file_id)
        except Exception as exc:  # the sweeps take it later
            log.error("removing abandoned upload %d failed: %s", file_id, exc)

    async def _drop_later(self, blob: int) -> None:
        """A deduplicated upload's own copy is deleted some seconds after its answer (at a
        random moment within DROP_AFTER_S), so the deletion's work is neither part of the
        answer's time nor tied to it; a node stopped meanwhile leaves it to the sweep."""
        await asyncio.sleep(_jitter.uniform(*DROP_AFTER_S))
        await self._drop([blob])

    async def _drop(self, blobs: list[int]) -> None:
        """Delete blobs no file refers to any more (outside the content store's transaction);
        one that fails is left to the sweep of orphans."""
        try:
            await self.blobs.delete(blobs)
        except Exception as exc:
            log.error("deleting stored file bytes %s failed: %s", blobs, exc)

    def _refuse(self, user: User, room: int, exc: ChatError) -> ChatError:
        self.refused += 1
        log.warning("upload by user %d to room %d refused: %s", user.id, room, exc.message)
        return exc

    async def start(self) -> None:
        """Open the configured storage backend, then sweep what this node left."""
        if self._config.storage != self.blobs.kind:
            try:
                self.blobs = await open_blobs(self._config, self._db, self._reads)
            except Exception as exc:
                raise StorageError(
                    f"files.storage = {self._config.storage!r} cannot be used: {exc}"
                ) from None
        await self.sweep(at_start=True)

    async def sweep(self, *, at_start: bool) -> int:
        """Delete pending uploads left by a killed node (this one's at its start), then every
        blob no pending or ready file refers to (:meth:`sweep_orphans`)."""
        older = now_ms() - self._config.pending_timeout_s * 1000
        swept = await file_store.sweep(
            self._db, node=self._node if at_start else None, older_than_ms=older
        )
        if swept:
            log.warning("swept %d unfinished upload(s) a stopped node left behind", len(swept))
            if not self.blobs.in_database:
                await self.blobs.delete(swept, unfinished=True)
        await self.sweep_orphans()
        return len(swept)

    async def sweep_orphans(self) -> int:
        """Delete the stored blobs that no pending or ready file refers to: what a crash
        between a commit and a deletion left, and (other backends than the content store)
        the blobs of removed files of a cleared or deleted room."""
        gone = 0
        async for page in self.blobs.stored():
            orphans = await file_store.orphans(self._db, page)
            if orphans:
                await self.blobs.delete(orphans, unfinished=True)
                gone += len(orphans)
        if gone:
            log.warning("deleted %d stored file(s) no file refers to any more", gone)
        return gone

    def start_sweeping(self) -> None:
        """Sweep other nodes' abandoned uploads every quarter of ``pending_timeout_s`` (a node
        that never restarts leaves its own to the others)."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_every())

    async def _sweep_every(self) -> None:
        interval = max(60.0, self._config.pending_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep(at_start=False)
            except Exception as exc:
                log.error("sweeping unfinished uploads failed: %s", exc)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for task in list(self._dropping):
            task.cancel()  # (the sweep at the next start deletes what they would have)
        if self._dropping:
            await asyncio.gather(*self._dropping, return_exceptions=True)
        await self.blobs.close()

    # -- download ---------------------------------------------------------------------------

    async def find(self, user: User, file_id: int) -> StoredFile:
        """The file, if ``user`` may read its room; ``not_found`` otherwise, exactly as for a
        file that does not exist: one read of the file, then the room's authorization (a
        missing file asks about a room that does not exist, which reads the store as a room
        not cached does; a refused cached room reads it too)."""
        found = await file_store.get(self._db, file_id)
        room_id = found.room if found is not None else NO_ROOM
        cached = self._facts.cached_room(room_id) is not None
        try:
            await self._auth.check(user, room_id, "read")
        except ChatError as exc:
            if exc.code == FORBIDDEN and cached:
                await self._facts.read_missing_room()
            raise ChatError(NOT_FOUND, NO_FILE) from None
        if found is None:  # pragma: no cover - NO_ROOM never exists
            raise ChatError(NOT_FOUND, NO_FILE)
        return found

    async def downloading(self, user: User, found: StoredFile) -> None:
        """Record the FILEDOWNLOAD (compliance on) before the bytes are sent."""
        self.downloads += 1
        node = self._capture.node
        if node is None:
            return
        try:
            await file_store.record_download(self._db, node, user.id, found)
        except Exception as exc:
            self._capture.failed(["FILEDOWNLOAD"], exc)  # logged once per outage
            raise ChatError(
                UNAVAILABLE, "the download could not be recorded; retry later"
            ) from None
        self._capture.recorded()

    async def content(self, found: StoredFile, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes ``start`` … ``end`` (inclusive) of the file, a chunk at a time."""
        async for data in self.blobs.read(found.blob, found.chunk_size, start, end):
            self.downloaded_bytes += len(data)
            yield data

    # -- removal ----------------------------------------------------------------------------

    async def remove(self, user: User, file_id: int) -> None:
        found = await self.find(user, file_id)
        if found.uploader_id != user.id:
            try:
                await self._auth.check(user, found.room, "manage")
            except ChatError:
                raise ChatError(
                    FORBIDDEN, "only the uploader, a room manager or an administrator may"
                ) from None
        removed = await file_store.remove(
            self._db, file_id, by=user.name, capture=self._capture.node
        )
        if removed is None:
            raise ChatError(NOT_FOUND, NO_FILE)
        seq, gone = removed
        if gone and not self.blobs.in_database:
            await self._drop(gone)
        log.info("file %d of room %d removed by user %d", file_id, found.room, user.id)
        self._messages_changed(MessagesChanged(found.room, (MessageChange(seq, "removed"),), None))


def _join_hash(hasher: Any, pieces: list[bytes]) -> bytes:
    """One chunk from the pieces read, added to the upload's SHA-256."""
    for piece in pieces:
        hasher.update(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _expected_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) != 64 or any(ch not in "0123456789abcdef" for ch in value):
        raise ChatError(BAD_REQUEST, "the expected SHA-256 must be 64 hexadecimal digits")
    return value


class _Pace:
    """When the next read of a body must have brought something: within ``idle_timeout_s``,
    and, once ``min_upload_grace_s`` passed, before the average falls under
    ``min_upload_kb_per_s`` (an upload of ``size`` bytes so far may last at most
    ``grace + size / rate`` seconds)."""

    def __init__(self, config: FilesConfig) -> None:
        self._idle = config.idle_timeout_s
        self._rate = config.min_upload_kb_per_s * 1024
        self._grace = config.min_upload_grace_s
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._slow = False

    def deadline(self, size: int) -> float:
        idle = self._loop.time() + self._idle
        if not self._rate:
            return idle
        slowest = self._start + self._grace + size / self._rate
        self._slow = slowest < idle
        return min(idle, slowest)

    def failure(self, size: int) -> ChatError:
        if self._slow:
            took = self._loop.time() - self._start
            return ChatError(
                BAD_REQUEST,
                f"the body came too slowly ({size / 1024 / max(took, 1e-9):.1f} KiB/s after"
                f" {took:.0f} s; files.min_upload_kb_per_s = {self._rate / 1024:g})",
            )
        return ChatError(BAD_REQUEST, f"the body stalled for {self._idle:g} s")
