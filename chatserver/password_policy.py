"""The password policy: a minimum length, and no password from a list of common ones.

Applied to every password this server sets (a user added, a user's own change, an
administrator's reset; :class:`~chatserver.accounts.Accounts`), never to one it only checks at
sign-in, so a policy made stricter does not lock anyone out. Directory users' passwords are the
directory's and its policy's.

The list (``chatserver/data/common-passwords.txt``) is the 10,000 most common passwords of
zxcvbn's frequency lists (MIT licence; see the file's header). A password is refused if, in lower
case, it is on the list, or is a listed one followed by digits and punctuation only
(``Password123!``), or is the user's own name.
"""

from __future__ import annotations

import functools
import secrets
from importlib import resources

from .config import PasswordsConfig

MAX_PASSWORD_CHARS = 1024


class WeakPassword(ValueError):
    """A password the policy refuses; the message says why (never the password)."""


@functools.cache
def common_passwords() -> frozenset[str]:
    text = resources.files("chatserver.data").joinpath("common-passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def _stem(password: str) -> str:
    """The password without trailing digits and punctuation, in lower case."""
    return password.lower().rstrip("0123456789!@#$%^&*()-_=+.,;:?/ ")


class PasswordPolicy:
    def __init__(self, config: PasswordsConfig) -> None:
        self._config = config

    def check(self, password: str, name: str = "") -> None:
        """:class:`WeakPassword` if the policy refuses ``password`` (for the user ``name``)."""
        c = self._config
        if len(password) < c.min_length:
            raise WeakPassword(f"a password has at least {c.min_length} characters")
        if len(password) > MAX_PASSWORD_CHARS:
            raise WeakPassword(f"a password has at most {MAX_PASSWORD_CHARS} characters")
        lowered = password.lower()
        if name and (lowered == name.lower() or _stem(password) == name.lower()):
            raise WeakPassword("a password must not be the user's name")
        if c.reject_common:
            common = common_passwords()
            if lowered in common or _stem(password) in common:
                raise WeakPassword("that password is too common; choose another")

    def generate(self) -> str:
        """A random password the policy accepts (an administrator's reset prints it once)."""
        return secrets.token_urlsafe(max(18, self._config.min_length))
