"""The pure parts of files (issue 16): sniffing, names, ranges, Content-Disposition, and the
file a peer's message event carries."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from chatserver.pool.events import MessageStored, decode, encode
from chatserver.protocol.errors import ChatError
from chatserver.rooms.media import file_name, sniff
from chatserver.store.messages import FileRef, Message
from chatserver.transport.http import content_disposition, parse_range


@pytest.mark.parametrize(
    ("head", "media_type"),
    [
        (b"\x89PNG\r\n\x1a\n\0\0", "image/png"),
        (b"\xff\xd8\xff\xe0JFIF", "image/jpeg"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04rest", "application/zip"),
        (b"RIFF\0\0\0\0WEBPVP8", "image/webp"),
        (b"\0\0\0\x18ftypisom", "video/mp4"),
        (b"  <!DOCTYPE html><p>", "text/html"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'>", "image/svg+xml"),
        (b"<?xml version='1.0'?><svg>", "image/svg+xml"),
        (b"plain words\nand lines\n", "text/plain"),
        ("naïve".encode() + b"\xc3", "text/plain"),  # a character cut at the sample's end
        (b"", "text/plain"),
        (b"\0\1\2\3binary", "application/octet-stream"),
    ],
)
def test_sniff(head: bytes, media_type: str) -> None:
    assert sniff(head) == media_type


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("report.pdf", "report.pdf"),
        ("../../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.exe", "evil.exe"),
        ("  spaced .txt  ", "spaced .txt"),
        ("...hidden", "hidden"),
    ],
)
def test_file_name(raw: str, name: str) -> None:
    assert file_name(raw) == name


@pytest.mark.parametrize(
    "raw", ["", "..", "dir/", "a\r\nb", "a\x00b", "a\x7fb", "\ud800", "x" * 256]
)
def test_file_name_refused(raw: str) -> None:
    with pytest.raises(ChatError):
        file_name(raw)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=2-", 10, (2, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=5-100", 10, (5, 9)),
        ("bytes=0-1,4-5", 10, None),  # several ranges: the whole file
        ("items=0-1", 10, None),
        ("", 10, None),
    ],
)
def test_parse_range(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=5-4", 10), ("bytes=-0", 10), ("bytes=-1", 0)]
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(ValueError):
        parse_range(header, size)


@pytest.mark.parametrize("name", ['a"b.txt', "résumé.pdf", "x;filename=y", "日本.txt", "a\\b"])
def test_content_disposition_is_one_safe_header(name: str) -> None:
    value = content_disposition(name)
    assert value.startswith('attachment; filename="')
    assert value.count('"') == 2 and "\\" not in value and value.isascii()
    assert unquote(value.split("filename*=UTF-8''", 1)[1]) == name


def test_a_peer_message_event_carries_its_file() -> None:
    ref = FileRef(7, "a.txt", 12, "text/plain", "ab" * 32)
    message = Message(1, 5, 1000, 2, "alice", "see", "file:7", file=ref)
    decoded = decode(encode(MessageStored(message)))
    assert isinstance(decoded, MessageStored) and decoded.message.file == ref
    bad = encode(MessageStored(message))
    bad["m"]["file"] = {"id": "7"}
    with pytest.raises(ValueError):
        decode(bad)
    bad["m"]["file"] = "7"
    with pytest.raises(ValueError):
        decode(bad)


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"storage": "s3"}, "s3_bucket"),
        ({"storage": "directory", "directory": ""}, "directory"),
        ({"storage": "ftp"}, "storage"),
        ({"s3_part_mb": 4}, "s3_part_mb"),
        ({"public_url": "javascript:alert(1)"}, "public_url"),
        ({"min_upload_kb_per_s": -1}, "min_upload_kb_per_s"),
    ],
)
def test_files_storage_settings_are_checked(files: dict[str, object], error: str) -> None:
    from chatserver.config import ConfigError, load_config

    env = {f"CHATSERVER_FILES_{key.upper()}": str(value) for key, value in files.items()}
    with pytest.raises(ConfigError, match=error):
        load_config(env=env)


def test_s3_settings_load() -> None:
    from chatserver.config import load_config

    config = load_config(
        env={"CHATSERVER_FILES_STORAGE": "s3", "CHATSERVER_FILES_S3_BUCKET": "chat-files"}
    )
    assert config.files.storage == "s3" and config.files.s3_part_mb == 8
    assert "s3_secret_key" not in repr(config.files)
