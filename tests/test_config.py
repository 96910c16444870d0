"""Loading the node configuration from defaults, a TOML file and the environment.

Every call passes ``env=`` explicitly so the real environment never leaks in.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from chatserver.config import Config, ConfigError, load_config, parse_address


def get(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chat.toml"
    path.write_text(text, encoding="utf-8")
    return path


def assert_config_error(*names: str, path: Path | None = None, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    message = str(info.value)
    for name in names:
        assert name in message, (name, message)
    return message


# --- defaults ---------------------------------------------------------------------------------

DEFAULTS = {
    "node.name": socket.gethostname(),
    "database.url": "sqlite:///var/chat.db",
    "listen.tcp": "127.0.0.1:5041",
    "listen.websocket": "127.0.0.1:5080",
    "listen.management": "127.0.0.1:8012",
    "listen.peer": "127.0.0.1:8011",
    "chat.default_chat_history": 30,
    "chat.max_message_chars": 8000,
    "chat.history_page_max": 500,
    "limits.max_frame_bytes": 1048576,
    "limits.auth_timeout_s": 10,
    "limits.posts_per_user_per_s": 20,
    "limits.output_buffer_bytes": 4194304,
    "limits.max_unauthenticated_frame_bytes": 16384,
    "limits.max_frame_values": 32768,
    "limits.frame_timeout_s": 30,
    "limits.max_buffered_input_bytes": 67108864,
    "limits.max_unauthenticated_per_address": 64,
    "limits.max_connections_per_user": 32,
    "limits.fd_reserve": 256,
}


@pytest.mark.parametrize(("key", "expected"), DEFAULTS.items(), ids=DEFAULTS.keys())
def test_default(key: str, expected: Any) -> None:
    value = get(load_config(env={}), key)
    assert value == expected
    assert type(value) in ((int, float) if isinstance(expected, int) else (str,))


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    from_file = load_config(write(tmp_path, ""), env={})
    assert from_file == load_config(env={})
    for key, expected in DEFAULTS.items():
        assert get(from_file, key) == expected


def test_default_tls_is_off() -> None:
    assert not load_config(env={}).tls.enabled


# --- the file, then the environment -----------------------------------------------------------

FILE = """
[node]
name = "alpha"

[database]
url = "postgresql://chat@db.example/chat"

[listen]
tcp = "0.0.0.0:6041"
websocket = ""

[chat]
default_chat_history = 40
max_message_chars = 100

[limits]
auth_timeout_s = 2.5
"""

FILE_VALUES = {
    "node.name": "alpha",
    "database.url": "postgresql://chat@db.example/chat",
    "listen.tcp": "0.0.0.0:6041",
    "listen.websocket": "",
    "chat.default_chat_history": 40,
    "chat.max_message_chars": 100,
    "limits.auth_timeout_s": 2.5,
}


def test_file_overrides_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FILE), env={})
    for key, expected in DEFAULTS.items():
        assert get(config, key) == FILE_VALUES.get(key, expected), key


def test_path_may_be_a_string(tmp_path: Path) -> None:
    config = load_config(str(write(tmp_path, FILE)), env={})
    assert config.node.name == "alpha"


ENV = {
    "CHATSERVER_NODE_NAME": "beta",
    "CHATSERVER_DATABASE_URL": "sqlite:////tmp/x.db",
    "CHATSERVER_LISTEN_TCP": "127.0.0.2:7041",
    "CHATSERVER_CHAT_DEFAULT_CHAT_HISTORY": "50",
    "CHATSERVER_LIMITS_AUTH_TIMEOUT_S": "0.5",
    "CHATSERVER_LIMITS_POSTS_PER_USER_PER_S": "3",
}

ENV_VALUES = {
    "node.name": "beta",
    "database.url": "sqlite:////tmp/x.db",
    "listen.tcp": "127.0.0.2:7041",
    "chat.default_chat_history": 50,
    "limits.auth_timeout_s": 0.5,
    "limits.posts_per_user_per_s": 3,
}


def test_environment_overrides_defaults() -> None:
    config = load_config(env=ENV)
    for key, expected in DEFAULTS.items():
        assert get(config, key) == ENV_VALUES.get(key, expected), key


def test_environment_overrides_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FILE), env=ENV)
    for key, expected in DEFAULTS.items():
        assert get(config, key) == ENV_VALUES.get(key, FILE_VALUES.get(key, expected)), key


def test_environment_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    config = load_config(env={"CHATSERVER_CONFIG": str(path)})
    assert config == load_config(path, env={})
    assert config.node.name == "alpha"


def test_explicit_path_beats_chatserver_config(tmp_path: Path) -> None:
    explicit = write(tmp_path, '[node]\nname = "explicit"\n')
    named = tmp_path / "other.toml"
    named.write_text('[node]\nname = "named"\n', encoding="utf-8")
    config = load_config(explicit, env={"CHATSERVER_CONFIG": str(named)})
    assert config.node.name == "explicit"


def test_empty_chatserver_config_means_no_file() -> None:
    assert load_config(env={"CHATSERVER_CONFIG": ""}) == load_config(env={})


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"CHATSERVER_TEST_DIALECTS": "sqlite"}, id="unrelated-prefixed"),
        pytest.param({"CHATSERVER_CHAT": "5"}, id="section-only"),
        pytest.param(
            {"DATABASE_URL": "mysql://x", "CHAT_DEFAULT_CHAT_HISTORY": "0"}, id="unprefixed"
        ),
        pytest.param({"chatserver_chat_default_chat_history": "0"}, id="lower-case-prefix"),
    ],
)
def test_other_variables_are_ignored(env: dict[str, str]) -> None:
    assert load_config(env=env) == load_config(env={})


def test_empty_listener_switches_it_off() -> None:
    assert load_config(env={"CHATSERVER_LISTEN_WEBSOCKET": ""}).listen.websocket == ""


@pytest.mark.parametrize(
    "address", ["[::1]:5041", "::1:5041", "0.0.0.0:0", "localhost:65535", "chat.example.org:443"]
)
def test_good_addresses(address: str) -> None:
    assert load_config(env={"CHATSERVER_LISTEN_PEER": address}).listen.peer == address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:5041", ("127.0.0.1", 5041)),
        ("[::1]:80", ("::1", 80)),
        ("host:0", ("host", 0)),
        ("host:65535", ("host", 65535)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "url",
    ["sqlite:///var/chat.db", "sqlite://", "postgresql://u:p@h:5432/db", "postgres://h/db"],
)
def test_good_database_urls(url: str) -> None:
    assert load_config(env={"CHATSERVER_DATABASE_URL": url}).database.url == url


@pytest.mark.parametrize(
    ("key", "value"),
    [("chat.default_chat_history", 1), ("chat.default_chat_history", 500)],
)
def test_range_boundaries_accepted(tmp_path: Path, key: str, value: int) -> None:
    section, name = key.split(".")
    config = load_config(write(tmp_path, f"[{section}]\n{name} = {value}\n"), env={})
    assert get(config, key) == value


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("node-1", id="plain"),
        pytest.param("1", id="digits"),
        pytest.param("true", id="boolean-word"),
        pytest.param("2024-01-01", id="date"),
    ],
)
def test_string_setting_from_environment(name: str) -> None:
    assert load_config(env={"CHATSERVER_NODE_NAME": name}).node.name == name


# --- errors -----------------------------------------------------------------------------------

BAD_FILES = [
    pytest.param("[chat]\nbogus = 1\n", "chat.bogus", id="unknown-key"),
    pytest.param("[chat]\ndefault_chat_histroy = 5\n", "chat.default_chat_histroy", id="typo"),
    pytest.param("[bogus]\na = 1\n", "bogus", id="unknown-section"),
    pytest.param('name = "x"\n', "name", id="unknown-top-level-key"),
    pytest.param("[chat]\ndefault_chat_history = 0\n", "chat.default_chat_history", id="history-0"),
    pytest.param(
        "[chat]\ndefault_chat_history = 501\n", "chat.default_chat_history", id="history-501"
    ),
    pytest.param(
        '[chat]\ndefault_chat_history = "many"\n', "chat.default_chat_history", id="str-for-int"
    ),
    pytest.param("[chat]\nmax_message_chars = 0\n", "chat.max_message_chars", id="message-chars-0"),
    pytest.param("[chat]\nhistory_page_max = 10001\n", "chat.history_page_max", id="page-max"),
    pytest.param("[limits]\nmax_frame_bytes = 1023\n", "limits.max_frame_bytes", id="frame-small"),
    pytest.param("[limits]\nauth_timeout_s = 0\n", "limits.auth_timeout_s", id="auth-timeout-0"),
    pytest.param("[limits]\nposts_per_user_per_s = -1\n", "limits.posts_per_user_per_s", id="rate"),
    pytest.param("[limits]\noutput_buffer_bytes = 1\n", "limits.output_buffer_bytes", id="buffer"),
    pytest.param(
        "[limits]\nmax_buffered_input_bytes = 1024\n", "limits", id="input-budget-below-frame"
    ),
    pytest.param("[limits]\nframe_timeout_s = 0\n", "limits.frame_timeout_s", id="frame-timeout"),
    pytest.param("[limits]\nmax_frame_values = 10\n", "limits.max_frame_values", id="values"),
    pytest.param(
        '[listen]\nwebsocket_origins = ["example.com"]\n',
        "listen.websocket_origins",
        id="origin-without-scheme",
    ),
    pytest.param('[listen]\ntcp = "nohost"\n', "listen.tcp", id="no-port"),
    pytest.param('[listen]\ntcp = "host:99999"\n', "listen.tcp", id="port-too-big"),
    pytest.param('[listen]\nwebsocket = "host:-1"\n', "listen.websocket", id="port-negative"),
    pytest.param('[listen]\nmanagement = "host:http"\n', "listen.management", id="port-name"),
    pytest.param('[listen]\npeer = ":8011"\n', "listen.peer", id="no-host"),
    pytest.param("[listen]\ntcp = 5041\n", "listen.tcp", id="int-address"),
    pytest.param('[database]\nurl = "mysql://h/db"\n', "database.url", id="mysql"),
    pytest.param('[database]\nurl = "/var/chat.db"\n', "database.url", id="bare-path"),
    pytest.param('[node]\nname = ""\n', "node.name", id="empty-node-name"),
    pytest.param("chat = 5\n", "chat", id="section-not-table"),
]


@pytest.mark.parametrize(("text", "key"), BAD_FILES)
def test_bad_file_value(tmp_path: Path, text: str, key: str) -> None:
    assert_config_error(key, path=write(tmp_path, text), env={})


BAD_ENV = [
    ("CHATSERVER_CHAT_DEFAULT_CHAT_HISTORY", "0", "chat.default_chat_history"),
    ("CHATSERVER_CHAT_DEFAULT_CHAT_HISTORY", "501", "chat.default_chat_history"),
    ("CHATSERVER_CHAT_DEFAULT_CHAT_HISTORY", "lots", "chat.default_chat_history"),
    ("CHATSERVER_LIMITS_MAX_FRAME_BYTES", "1.5", "limits.max_frame_bytes"),
    ("CHATSERVER_LISTEN_TCP", "nohost", "listen.tcp"),
    ("CHATSERVER_LISTEN_MANAGEMENT", "host:99999", "listen.management"),
    ("CHATSERVER_DATABASE_URL", "mysql://h/db", "database.url"),
]


@pytest.mark.parametrize(("name", "value", "key"), BAD_ENV)
def test_bad_environment_value(name: str, value: str, key: str) -> None:
    assert_config_error(key, env={name: value})


def test_bad_environment_value_beats_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[chat]\ndefault_chat_history = 40\n")
    assert_config_error(
        "chat.default_chat_history",
        path=path,
        env={"CHATSERVER_CHAT_DEFAULT_CHAT_HISTORY": "501"},
    )


def test_good_environment_value_repairs_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[chat]\ndefault_chat_history = 501\n")
    config = load_config(path, env={"CHATSERVER_CHAT_DEFAULT_CHAT_HISTORY": "7"})
    assert config.chat.default_chat_history == 7


def test_environment_into_non_table_section(tmp_path: Path) -> None:
    path = write(tmp_path, "chat = 5\n")
    assert_config_error("chat", path=path, env={"CHATSERVER_CHAT_DEFAULT_CHAT_HISTORY": "5"})


def test_every_bad_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[chat]\ndefault_chat_history = 0\n[listen]\npeer = "x"\n')
    assert_config_error("chat.default_chat_history", "listen.peer", path=path, env={})


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert_config_error(str(path), path=path, env={})


def test_missing_file_named_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert_config_error(str(path), env={"CHATSERVER_CONFIG": str(path)})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert_config_error(str(tmp_path), path=tmp_path, env={})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    path.chmod(0)
    try:
        assert_config_error(str(path), path=path, env={})
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[chat\n", id="unclosed-table"),
        pytest.param("[chat]\ndefault_chat_history = \n", id="missing-value"),
        pytest.param(
            "[chat]\ndefault_chat_history = 1\ndefault_chat_history = 2\n", id="duplicate"
        ),
        pytest.param('[node]\nname = "unterminated\n', id="unterminated-string"),
        pytest.param("this is not toml\n", id="prose"),
    ],
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = assert_config_error(str(path), path=path, env={})
    assert "TOML" in message


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "chat.toml"
    path.write_bytes(b'[node]\nname = "caf\xe9"\n')  # Latin-1, not UTF-8
    assert_config_error(str(path), path=path, env={})
