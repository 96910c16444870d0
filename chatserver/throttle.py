"""The login throttle: failed sign-ins slow down, then lock out, an account name and an address.

Every way of signing in goes through it — ``auth`` over TCP and WebSocket (password or token),
``password.change``, and the management port's Basic and Bearer authentication — and its state
is in the store (``login_failures``), so every node of a pool sees the same counts.

Two keys are counted for each failure: the **account name as given** (whether or not such a
user exists, so the answer never tells which names do) and the **source address** (an IPv4
address, or the /64 an IPv6 address is in). For each key, with ``f`` failures each less than
``forget_after_s`` after the one before::

    f < free                  no wait
    f >= free                 the next attempt waits backoff_base_s * 2**(f - free), at most
                              backoff_max_s, counted from the last failure
    f reaches lockout         locked for lockout_s; every failure after that locks it again

An attempt refused because of the throttle (``rate_limited``, with the seconds to wait) is not
checked and not counted. A success forgets the account's failures, not the address's (else an
attacker who owns one account could wipe the count of the address they guess from). A lockout
is logged, counted in the metrics and written to the audit log.

Attempts checked at the same moment (on several connections) are all counted but only checked
against the count before them: a key can overshoot the count that locks it by the number of
attempts in flight at once, never more.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .protocol.errors import RetryLater
from .rooms.audit import SYSTEM, Audit
from .store import users as user_store
from .store.db import Database, now_ms
from .store.users import Failures, Key

if TYPE_CHECKING:
    from .config import LoginConfig
    from .metrics import Metrics

log = logging.getLogger("chatserver.throttle")

ACCOUNT = "account"
ADDRESS = "address"
# Forgotten failures are deleted at most this often per node (on the next failure).
PRUNE_INTERVAL_S = 60.0
# A key is at most this long (users.name is String(256); longer names match no user).
MAX_KEY = 256


@dataclass(frozen=True, slots=True)
class Source:
    """Where a sign-in came from: the peer's address as the transport saw it, and the way
    (``tcp``, ``websocket``, ``management``)."""

    address: str
    via: str


def address_key(address: str) -> str:
    """The key of a source address: the address itself, an IPv4-mapped IPv6 address as IPv4,
    an IPv6 address as its /64 (one host commonly holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:MAX_KEY]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    def __init__(self, config: LoginConfig, db: Database, metrics: Metrics, audit: Audit) -> None:
        self._config = config
        self._db = db
        self._metrics = metrics
        self._audit = audit
        self._pruned = 0.0

    def _keys(self, name: str | None, source: Source) -> list[Key]:
        keys: list[Key] = []
        if name is not None and self._config.account_throttle:
            keys.append((ACCOUNT, name[:MAX_KEY]))
        if self._config.address_throttle and source.address:
            keys.append((ADDRESS, address_key(source.address)))
        return keys

    def _limits(self, scope: str) -> tuple[int, int]:
        """(free failures, failures that lock out) of a scope."""
        c = self._config
        if scope == ACCOUNT:
            return c.account_free_failures, c.account_lockout_failures
        return c.address_free_failures, c.address_lockout_failures

    def wait_ms(self, scope: str, state: Failures, now: int) -> int:
        """How long a key in ``state`` must wait before its next attempt (0: none)."""
        if state.locked_until_ms > now:
            return state.locked_until_ms - now
        free, _lockout = self._limits(scope)
        if state.failures < free:
            return 0
        c = self._config
        exponent = min(state.failures - free, 32)
        delay_ms = int(min(c.backoff_base_s * 2**exponent, c.backoff_max_s) * 1000)
        return max(0, state.last_ms + delay_ms - now)

    async def check(self, name: str | None, source: Source) -> bool:
        """Raise :class:`RetryLater` if an attempt for ``name`` (None: a token) from ``source``
        must wait; returns whether the account has failures to forget after a success."""
        keys = self._keys(name, source)
        if not keys:
            return False
        now = now_ms()
        since = now - self._config.forget_after_s * 1000
        states = await user_store.get_login_failures(self._db, keys, since)
        wait = max((self.wait_ms(key[0], state, now) for key, state in states.items()), default=0)
        if wait > 0:
            self._metrics.sign_in_throttled(source.via)
            retry_after = max(1, math.ceil(wait / 1000))
            raise RetryLater(f"too many failed sign-ins; try again in {retry_after} s", retry_after)
        return any(key[0] == ACCOUNT for key in states)

    async def failed(self, name: str | None, source: Source) -> None:
        """Count a failed attempt (a wrong name or password, an unknown token)."""
        self._metrics.sign_in_failed(source.via)
        keys = self._keys(name, source)
        if not keys:
            return
        c = self._config
        now = now_ms()
        forget_before = now - c.forget_after_s * 1000
        recorded = await user_store.record_login_failure(
            self._db,
            [(key, self._limits(key[0])[1]) for key in keys],
            now,
            forget_before,
            c.lockout_s * 1000,
        )
        for (scope, key), (state, locked_now) in recorded.items():
            if locked_now:
                await self._locked(scope, key, state, source)
        if time.monotonic() - self._pruned > PRUNE_INTERVAL_S:
            self._pruned = time.monotonic()
            await user_store.prune_login_failures(self._db, forget_before, now)

    async def succeeded(self, name: str, had_failures: bool) -> None:
        """A right password for ``name``: forget the account's failures (if it had any)."""
        if had_failures:
            await user_store.clear_login_failures(self._db, (ACCOUNT, name[:MAX_KEY]))

    async def _locked(self, scope: str, key: str, state: Failures, source: Source) -> None:
        self._metrics.sign_in_locked(scope)
        log.warning(
            "sign-in lockout of %s %r for %d s after %d failures (last via %s from %s)",
            scope,
            key,
            self._config.lockout_s,
            state.failures,
            source.via,
            source.address,
        )
        await self._audit.record(
            SYSTEM,
            "login.lockout",
            f"{scope}:{key}"[:MAX_KEY],
            None,
            {
                "failures": state.failures,
                "locked_until": state.locked_until_ms,
                "via": source.via,
                "address": source.address,
            },
        )
