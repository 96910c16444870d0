"""Signed checkpoints of the compliance chain: a head that cannot be quietly rewound.

A checkpoint states "the chain had event ``seq`` with hash ``hash``", signed with an Ed25519 key
kept **outside** the compliance database (``[compliance] signing_key``, a PEM file). Someone who
can rewrite the compliance database can delete the last events and rewind ``compliance_chain``
so the chain still looks whole; a checkpoint published before (next to every export, or on
demand with ``chatserver compliance checkpoint``) still names the later head, and ``verify
--checkpoint`` reports exactly which events are gone after the archive's end.

The signed text is the checkpoint's fields (all but ``signature``) as compact JSON with sorted
keys; ``key_id`` is the first 16 hex digits of SHA-256 over the raw public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select

from chatserver.store.db import Database, now_ms

from .schema import chain, events

FORMAT = "chatserver-compliance-checkpoint"
VERSION = 1
MAX_FILE = 64 * 1024  # a checkpoint file is a few hundred bytes; refuse to read more


class CheckpointError(Exception):
    """A key or checkpoint file that cannot be used (missing, malformed, wrong signature)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    event_id: str | None
    ts_ms: int | None  # the event's capture time
    signed_ms: int
    key_id: str
    signature: str = ""
    format: str = FORMAT
    version: int = VERSION

    def signed_text(self) -> bytes:
        fields = asdict(self)
        fields.pop("signature")
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise CheckpointError("not a compliance checkpoint")
            if data.get("version") != VERSION:
                raise CheckpointError(f"checkpoint version {data.get('version')!r} is unknown")
            return cls(
                seq=_int(data["seq"]),
                hash=str(data["hash"]),
                event_id=None if data.get("event_id") is None else str(data["event_id"]),
                ts_ms=None if data.get("ts_ms") is None else _int(data["ts_ms"]),
                signed_ms=_int(data["signed_ms"]),
                key_id=str(data["key_id"]),
                signature=str(data["signature"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"malformed checkpoint: {exc}") from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(path: Path) -> Path:
    """Write a new private key to ``path`` (mode 0600, refusing to overwrite) and its public
    key to ``path.pub``; returns the public key's path."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public = path.with_name(path.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def load_private(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"signing key {path}: not an Ed25519 key")
    return key


def load_public(path: str | Path) -> Ed25519PublicKey:
    """A public key file, or the public half of a private key file."""
    data = Path(path).read_bytes()
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        return load_private(path).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"public key {path}: not an Ed25519 key")
    return key


def sign(
    key: Ed25519PrivateKey, seq: int, hash_: str, event_id: str | None, ts_ms: int | None
) -> Checkpoint:
    unsigned = Checkpoint(seq, hash_, event_id, ts_ms, now_ms(), key_id(key.public_key()))
    signature = base64.b64encode(key.sign(unsigned.signed_text())).decode()
    return Checkpoint(seq, hash_, event_id, ts_ms, unsigned.signed_ms, unsigned.key_id, signature)


def check_signature(checkpoint: Checkpoint, public: Ed25519PublicKey) -> None:
    if checkpoint.key_id != key_id(public):
        raise CheckpointError(
            f"checkpoint at seq {checkpoint.seq} was signed by key {checkpoint.key_id},"
            f" not by the given key {key_id(public)}"
        )
    try:
        public.verify(base64.b64decode(checkpoint.signature), checkpoint.signed_text())
    except (InvalidSignature, ValueError):
        raise CheckpointError(f"checkpoint at seq {checkpoint.seq}: bad signature") from None


def read(path: str | Path) -> Checkpoint:
    try:
        with open(path, "rb") as src:
            data = src.read(MAX_FILE + 1)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    if len(data) > MAX_FILE:
        raise CheckpointError(f"checkpoint {path}: larger than {MAX_FILE} bytes")
    try:
        return Checkpoint.from_json(data.decode())
    except UnicodeDecodeError:
        raise CheckpointError(f"checkpoint {path}: not UTF-8") from None
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None


async def of_head(comp: Database, key: Ed25519PrivateKey) -> Checkpoint:
    """A signed checkpoint of the chain head as it is now."""
    async with comp.read() as conn:
        head = (await conn.execute(select(chain).where(chain.c.id == 1))).one()
        last = (
            await conn.execute(
                select(events.c.event_id, events.c.ts_ms).where(events.c.seq == head.head_seq)
            )
        ).one_or_none()
    return sign(
        key,
        int(head.head_seq),
        str(head.head_hash),
        last.event_id if last else None,
        int(last.ts_ms) if last else None,
    )
