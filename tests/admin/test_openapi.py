"""The management API conforms to the OpenAPI document it serves at /openapi.json.

schemathesis generates requests from the document (valid ones, and invalid ones the server must
refuse with a 4xx) and checks every response — status, content type, headers, body — against it.
The node runs as a real ``chatserver run`` process on SQLite; schemathesis's tests are
synchronous and talk to it over HTTP.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.generation.case import Case

from chatserver.testing import free_port
from tests.conftest import scaled

TOKEN = "openapi-test-token-abcdef0123456789"

# schemathesis and hypothesis warn about things that are not failures of the API under test.
pytestmark = [
    pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning"),
    pytest.mark.filterwarnings("ignore:.*schemathesis.*:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def management(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``chatserver run`` on a fresh SQLite store; yields its management URL."""
    tmp = tmp_path_factory.mktemp("openapi")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSERVER_")}
    env.update(
        CHATSERVER_DATABASE_URL=f"sqlite:///{tmp}/chat.db",
        CHATSERVER_LISTEN_TCP=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_WEBSOCKET=f"127.0.0.1:{free_port()}",
        CHATSERVER_LISTEN_MANAGEMENT="127.0.0.1:0",
        CHATSERVER_LISTEN_HTTP="127.0.0.1:0",
        CHATSERVER_ADMIN_PASSWORD="openapi-admin-password",
        CHATSERVER_MANAGEMENT_TOKEN=TOKEN,
        CHATSERVER_TRANSFER_DIRECTORY=f"{tmp}/transfer",
        # schemathesis sends hundreds of invalid credentials from one address and expects 401
        # for each; the login throttle would soon answer 429 (tests/abuse/ tests it).
        CHATSERVER_LOGIN_ACCOUNT_THROTTLE="false",
        CHATSERVER_LOGIN_ADDRESS_THROTTLE="false",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatserver", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: list[str] = []
    found: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # read everything, so the server never blocks on a full pipe
        for line in stdout:
            lines.append(line)
            if match := re.search(r"management API on (http://[\d.]+:\d+)/", line):
                found.put(match.group(1))
        found.put("")

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        url = found.get(timeout=scaled(30))
        assert url, "chatserver run exited:\n" + "".join(lines)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=scaled(30))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        stdout.close()
    assert proc.returncode == 0, "".join(lines)
    text = "".join(lines)
    # the server checks each response against the document too; none may have failed
    assert "does not match its schema" not in text, text
    assert "Traceback" not in text, text


@pytest.fixture(scope="module")
def api_schema(management: str) -> Any:
    response = requests.get(
        f"{management}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    response.raise_for_status()
    schema = schemathesis.openapi.from_dict(response.json())
    schema.config.update(base_url=management)
    return schema


# Examples per operation and generation mode: ~40 operations times 2 modes stay well under a minute.
# CHATSERVER_OPENAPI_EXAMPLES=200 for a deeper run.
MAX_EXAMPLES = int(os.environ.get("CHATSERVER_OPENAPI_EXAMPLES", "8"))


@pytest.mark.timeout(max(180, MAX_EXAMPLES * 20))
def test_api_conforms_to_its_document(api_schema: Any) -> None:
    """Every operation, with valid (positive) and invalid (negative) generated requests."""
    failures: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize="CHATSERVER_OPENAPI_EXAMPLES" not in os.environ,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            def check(case: Case) -> None:
                case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # collect them all, then fail with every one
                failures.append(
                    f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"
                )
    assert operations >= 40
    assert not failures, "\n\n".join(failures)


def test_the_document_describes_every_route(management: str) -> None:
    from chatserver.admin.routes import ROUTES

    document = requests.get(
        f"{management}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ).json()
    assert document["openapi"].startswith("3.")
    described = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    assert {(r.method, r.path) for r in ROUTES} <= described
    assert {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")} <= described
    for path, ops in document["paths"].items():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert "{" + param["name"] + "}" in path
