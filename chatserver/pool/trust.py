"""Who may open a peer link: the pool secret, the limits before authentication, and peer TLS.

- :func:`load_secret` reads ``pool.secret`` (or ``pool.secret_file``) and refuses a secret too weak
  to stand an online or offline guess: a pool never runs without a strong one.
- :class:`Admission` caps the connections to the peer port that have not authenticated yet (in
  all, and per source address), so a flood of half-open handshakes costs a bounded amount.
- :class:`Refusals` counts refused and failed handshakes by a bounded reason (the metric
  ``chatserver_pool_handshakes_refused``) and keeps repeated warnings to one line per interval.
- :func:`server_context`, :func:`client_context`, :func:`tls_reason` and
  :func:`certificate_warning`: the peer port's TLS, and what its failures mean for an operator.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import time
from pathlib import Path

from ..config import Config, PoolConfig

log = logging.getLogger("chatserver.pool")

# A secret of at least this many characters, with at least MIN_SECRET_DISTINCT different ones
# (32 hex digits = 128 bits; ``chatserver pool up`` generates 64).
MIN_SECRET_CHARS = 32
MIN_SECRET_DISTINCT = 8

# Before a link has authenticated: connections held at once, in all and per source address.
MAX_UNAUTHENTICATED = 64
MAX_UNAUTHENTICATED_PER_ADDRESS = 8

# A certificate expiring sooner than this is warned about at start.
EXPIRY_WARNING_DAYS = 14

# The reasons a handshake is counted under (bounded labels of the metric).
REASONS = (
    "bad_proof",
    "frame_too_large",
    "peer_refused",
    "protocol",
    "timeout",
    "tls_expired",
    "tls_failed",
    "tls_unknown_ca",
    "too_many",
    "unregistered",
    "version",
    "wrong_node",
)


class SecretError(Exception):
    """``pool.secret`` / ``pool.secret_file`` cannot be used; the message says why."""


def check_secret(secret: str, setting: str = "pool.secret") -> str:
    """``secret`` if it is strong enough, else :class:`SecretError` naming ``setting``."""
    if not secret:
        raise SecretError(
            f"{setting} is empty: a pool needs a secret shared by every node (at least"
            f" {MIN_SECRET_CHARS} random characters, e.g. `openssl rand -hex 32`)"
        )
    if len(secret) < MIN_SECRET_CHARS or len(set(secret)) < MIN_SECRET_DISTINCT:
        raise SecretError(
            f"{setting} is too weak ({len(secret)} characters): use at least"
            f" {MIN_SECRET_CHARS} random characters, e.g. `openssl rand -hex 32`"
        )
    return secret


def load_secret(settings: PoolConfig) -> str:
    """The pool secret from ``pool.secret`` or the file ``pool.secret_file`` (one of them)."""
    if settings.secret_file:
        if settings.secret:
            raise SecretError("set pool.secret or pool.secret_file, not both")
        try:
            text = Path(settings.secret_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(
                f"pool.secret_file: cannot read {settings.secret_file}: {exc}"
            ) from None
        return check_secret(text.strip(), f"pool.secret_file ({settings.secret_file})")
    return check_secret(settings.secret)


class Admission:
    """Unauthenticated peer connections, in all and per source address (host only)."""

    def __init__(
        self,
        total: int = MAX_UNAUTHENTICATED,
        per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS,
    ) -> None:
        self.total = total
        self.per_address = per_address
        self.held: dict[str, int] = {}
        self.count = 0

    def enter(self, host: str) -> bool:
        if self.count >= self.total or self.held.get(host, 0) >= self.per_address:
            return False
        self.held[host] = self.held.get(host, 0) + 1
        self.count += 1
        return True

    def leave(self, host: str) -> None:
        left = self.held.get(host, 0) - 1
        if left <= 0:
            self.held.pop(host, None)
        else:
            self.held[host] = left
        self.count -= 1


class Refusals:
    """Refused and failed handshakes by reason; warnings of one reason at most once per
    ``interval`` seconds (the next line says how many were not logged)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.interval = interval
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def record(self, reason: str, message: str) -> None:
        if reason not in self.counts:
            reason = "protocol"
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < self.interval:
            self._quiet[reason] = self._quiet.get(reason, 0) + 1
            return
        self._last[reason] = now
        quiet = self._quiet.pop(reason, 0)
        more = f" ({quiet} more like it not logged)" if quiet else ""
        log.warning("pool: %s [%s]%s", message, reason, more)


# -- TLS ------------------------------------------------------------------------------------


def server_context(config: Config) -> ssl.SSLContext | None:
    if not (config.tls.enabled and config.pool.peer_tls):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls.certificate, config.tls.key or None)
    return context


def client_context(config: Config) -> ssl.SSLContext | None:
    if not (config.tls.enabled and config.pool.peer_tls):
        return None
    context = ssl.create_default_context(cafile=config.pool.peer_ca or config.tls.certificate)
    context.check_hostname = False  # peers are known by their proof, not their host name
    return context


# OpenSSL's verify codes (X509_V_ERR_*) an operator can act on.
_EXPIRED = {10}  # CERT_HAS_EXPIRED
_UNKNOWN_CA = {2, 18, 19, 20, 21}  # no issuer, self-signed, untrusted chain, leaf unverifiable


def tls_reason(exc: BaseException, config: Config) -> tuple[str, str]:
    """A failed TLS handshake as (metric reason, sentence for the log)."""
    if isinstance(exc, TimeoutError):
        return "timeout", "no TLS handshake within the deadline"
    text = (
        getattr(exc, "verify_message", None)
        or getattr(exc, "reason", None)
        or str(exc)
        or repr(exc)
    )
    code = getattr(exc, "verify_code", None)
    lowered = str(text).lower()
    if code in _EXPIRED or "expired" in lowered:
        return "tls_expired", f"TLS: the peer's certificate has expired ({text})"
    if code in _UNKNOWN_CA or "unknown ca" in lowered or "issuer" in lowered:
        ca = config.pool.peer_ca or f"tls.certificate {config.tls.certificate}"
        hint = (
            ""
            if config.pool.peer_ca
            else "; set pool.peer_ca to the CA that signed the peers' certificates"
        )
        return "tls_unknown_ca", f"TLS: certificate not trusted by {ca} ({text}){hint}"
    return "tls_failed", f"TLS handshake failed: {text}"


def certificate_warning(path: str, now: datetime.datetime | None = None) -> str | None:
    """A warning if the PEM certificate at ``path`` has expired or expires within
    :data:`EXPIRY_WARNING_DAYS` days, else ``None``."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        return f"cannot read the certificate {path}: {exc}"
    now = now or datetime.datetime.now(datetime.UTC)
    ends = cert.not_valid_after_utc
    if ends <= now:
        return (
            f"the certificate {path} expired on {ends:%Y-%m-%d %H:%M} UTC: peers will refuse"
            " this node's links"
        )
    left = ends - now
    if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return (
            f"the certificate {path} expires on {ends:%Y-%m-%d %H:%M} UTC"
            f" (in {left.days} days {left.seconds // 3600} hours): renew it"
        )
    return None
