"""The pool's admission rules without sockets: the secret's strength, the caps, the refusal log."""

from __future__ import annotations

import logging
import ssl

import pytest

from chatserver.config import load_config
from chatserver.pool.trust import Admission, Refusals, SecretError, check_secret, tls_reason


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        ("", False),
        ("x" * 31, False),
        ("ab" * 20, False),  # long but two characters
        ("0123456789abcdef" * 2, True),  # 32 hex digits: 128 bits
        ("correct horse battery staple, twice", True),
    ],
)
def test_the_secret_must_be_strong(secret: str, ok: bool) -> None:
    if ok:
        assert check_secret(secret) == secret
    else:
        with pytest.raises(SecretError, match=r"pool\.secret is (empty|too weak)"):
            check_secret(secret)


def test_admission_caps_per_address_and_in_all() -> None:
    gate = Admission(total=3, per_address=2)
    assert gate.enter("a") and gate.enter("a")
    assert not gate.enter("a")  # the address's cap
    assert gate.enter("b")
    assert not gate.enter("c")  # the total cap
    gate.leave("a")
    assert gate.enter("c") and gate.count == 3
    for host in ("a", "b", "c"):
        gate.leave(host)
    assert gate.count == 0 and gate.held == {}


def test_refusals_count_every_one_and_log_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = Refusals(interval=3600)
    with caplog.at_level(logging.WARNING, logger="chatserver.pool"):
        for _ in range(5):
            refusals.record("bad_proof", "peer x: handshake refused: authentication failed")
        refusals.record("no such reason", "peer y: something odd")
    assert refusals.counts["bad_proof"] == 5 and refusals.counts["protocol"] == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "pool: peer x: handshake refused: authentication failed [bad_proof]",
        "pool: peer y: something odd [protocol]",
    ]
    refusals.interval = 0
    with caplog.at_level(logging.WARNING, logger="chatserver.pool"):
        refusals.record("bad_proof", "peer x: again")
    assert caplog.records[-1].getMessage().endswith("[bad_proof] (4 more like it not logged)")


def test_tls_failures_are_named_for_the_operator() -> None:
    config = load_config(env={"CHATSERVER_TLS_CERTIFICATE": "/etc/c.pem"})

    def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
        exc = ssl.SSLCertVerificationError(1, message)
        exc.verify_code, exc.verify_message = code, message
        return exc

    reason, text = tls_reason(verify_error(10, "certificate has expired"), config)
    assert reason == "tls_expired" and "expired" in text
    reason, text = tls_reason(verify_error(20, "unable to get local issuer certificate"), config)
    assert reason == "tls_unknown_ca" and "set pool.peer_ca" in text and "/etc/c.pem" in text
    assert tls_reason(TimeoutError(), config)[0] == "timeout"
    assert tls_reason(ConnectionResetError(), config)[0] == "tls_failed"
