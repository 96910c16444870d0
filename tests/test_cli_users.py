"""``chatserver user list|show|passwd|disable|enable|delete``, run as an operator runs them
(a separate process on the configured store), and what they do to sign-ins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chatserver.config import load_config
from chatserver.server import Node
from chatserver.throttle import Source
from tests.conftest import PASSWORD
from tests.test_cli import chatserver, env_for


async def sign_in_error(env: dict[str, str], name: str, password: str) -> str | None:
    """Start a node on the store, try a sign-in through its accounts, stop it."""
    node = Node(load_config(env=env), announce=lambda _line: None)
    await node.start()
    try:
        await node.accounts.verify(name, password, Source("127.0.0.1", "tcp"))
    except Exception as exc:
        return getattr(exc, "code", type(exc).__name__)
    finally:
        await node.stop()
    return None


@pytest.mark.slow  # about 15 processes and 4 node starts: a minute or two
async def test_user_commands(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    code, out, err = await chatserver(
        "user", "add", "alice", "--password-stdin", env=env, stdin=PASSWORD + "\n"
    )
    assert code == 0, err
    alice = int(re.search(r"id (\d+)", out).group(1))  # type: ignore[union-attr]
    code, _, err = await chatserver(
        "user", "add", "bob", "--password-stdin", env=env, stdin="password123\n"
    )
    assert code == 1 and "common" in err  # the policy applies here too

    code, out, err = await chatserver("user", "list", "--json", env=env)
    assert code == 0, err
    assert [u["name"] for u in json.loads(out)] == ["alice"]
    code, out, _ = await chatserver("user", "show", str(alice), "--json", env=env)
    assert json.loads(out)[0]["disabled"] is False
    assert (await chatserver("user", "show", "999", env=env))[0] == 1

    code, out, err = await chatserver("user", "passwd", str(alice), "--generate", env=env)
    assert code == 0, err
    new = re.search(r"new password for 'alice': (\S+)", out).group(1)  # type: ignore[union-attr]
    assert await sign_in_error(env, "alice", PASSWORD) == "unauthenticated"
    assert await sign_in_error(env, "alice", new) is None
    code, _, err = await chatserver(
        "user", "passwd", str(alice), "--password-stdin", env=env, stdin="letmein1\n"
    )
    assert code == 1 and "common" in err

    assert (await chatserver("user", "disable", str(alice), env=env))[0] == 0
    assert await sign_in_error(env, "alice", new) == "unauthenticated"
    code, out, _ = await chatserver("user", "show", str(alice), "--json", env=env)
    assert json.loads(out)[0]["disabled"] is True
    assert (await chatserver("user", "enable", str(alice), env=env))[0] == 0
    assert await sign_in_error(env, "alice", new) is None

    code, out, err = await chatserver("user", "delete", str(alice), env=env)
    assert code == 0, err
    code, out, _ = await chatserver("user", "list", "--json", env=env)
    assert "alice" not in [u["name"] for u in json.loads(out)]
