"""What an uploaded file is, judged from its first bytes, and what it may be called.

The media type a client sends is never used: :func:`sniff` looks at the first bytes for a small
table of well-known signatures, and calls anything else ``text/plain`` (valid UTF-8 without
control characters) or ``application/octet-stream``. Whatever it says, downloads are served as
attachments with ``nosniff`` and a sandboxing CSP (docs/security.md, "Files"), so even a file
sniffed as HTML never runs in a browser: the type only helps the client show an icon.

:func:`file_name` turns a client's name into one that is safe to store and to send back in a
header: the last path component only, no control characters, at most 255 characters.
"""

from __future__ import annotations

from ..protocol.errors import BAD_REQUEST, ChatError
from ..protocol.text import text_problem

SNIFF_BYTES = 512  # how much of the start of a file sniff() looks at

# (offset, signature, media type), first match wins.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
    (0, b"OggS", "application/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\x1aE\xdf\xa3", "video/webm"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"\x00\x00\x01\x00", "image/vnd.microsoft.icon"),
    (0, b"\x7fELF", "application/x-executable"),
    (0, b"MZ", "application/vnd.microsoft.portable-executable"),
    (0, b"\x00asm", "application/wasm"),
    (0, b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (4, b"ftypisom", "video/mp4"),
    (4, b"ftypmp4", "video/mp4"),
    (4, b"ftypM4A", "audio/mp4"),
    (4, b"ftypqt", "video/quicktime"),
    (4, b"ftypheic", "image/heic"),
    (4, b"ftypavif", "image/avif"),
)
_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
_MARKUP = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<iframe", b"<svg")


def sniff(head: bytes) -> str:
    """The media type of a file starting with ``head`` (its first :data:`SNIFF_BYTES`)."""
    head = head[:SNIFF_BYTES]
    for offset, signature, media_type in _SIGNATURES:
        if head.startswith(signature, offset):
            return media_type
    if head.startswith(b"RIFF") and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith(b"<?xml"):
        return "image/svg+xml" if b"<svg" in start else "application/xml"
    if start.startswith(_MARKUP):
        return "text/html" if not start.startswith(b"<svg") else "image/svg+xml"
    if _is_text(head):
        return "text/plain"
    return "application/octet-stream"


def _is_text(head: bytes) -> bool:
    if not head:
        return True
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch >= " " or ch in "\t\r\n\f" for ch in text)


MAX_NAME = 255


def file_name(raw: str) -> str:
    """A safe name for an uploaded file, from the client's; ``bad_request`` if none is left.

    Only the last component of a path is kept (``../../etc/passwd`` is ``passwd``; ``\\`` counts
    as a separator too), control characters (CR, LF, NUL, …) are refused, surrounding spaces
    and dots are stripped, and the result has 1 to 255 characters.
    """
    problem = text_problem(raw)
    if problem is not None:
        raise ChatError(BAD_REQUEST, f"the file name {problem}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in raw):
        raise ChatError(BAD_REQUEST, "the file name must not contain control characters")
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip().strip(".").strip()
    if not name:
        raise ChatError(BAD_REQUEST, "give the file a name (the name parameter or header)")
    if len(name) > MAX_NAME:
        raise ChatError(BAD_REQUEST, f"the file name is longer than {MAX_NAME} characters")
    return name


def ascii_fallback(name: str) -> str:
    """``name`` for the plain ``filename=`` of Content-Disposition: ASCII letters, digits and
    ``._-`` (and spaces), the rest as ``_``; never a quote or a backslash."""
    out = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._- ") else "_" for ch in name)
    return out.strip() or "file"
