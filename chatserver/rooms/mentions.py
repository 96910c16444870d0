"""``@name`` mentions: which login names a message's text names (docs/protocol.md, "Mentions").

A mention is ``@`` followed by a login name made of letters, digits, ``_``, ``.`` and ``-``; the
``@`` must start the text or follow a character that is none of those (so ``mail@example.org``
names nobody). Dots and dashes that end the run are punctuation, not part of the name
(``@bob.`` at the end of a sentence names ``bob``; ``@j.doe-x`` names ``j.doe-x``). Names compare
without regard to case. A login name with any other character (a space, ``@``) cannot be
mentioned. At most :data:`MAX_MENTIONS` distinct names per message count, the first ones in the
text: one message cannot fan out to everyone.

Pure: the names are resolved to users in the storing transaction (chatserver/store/marks.py).
"""

from __future__ import annotations

import re

MAX_MENTIONS = 20
# A name longer than a login name may be (users.name is 256 characters) is not looked up.
MAX_NAME = 256
EXCERPT_CHARS = 200

_MENTION = re.compile(r"(?<![\w.@-])@([\w.-]+)")


def mentioned_names(text: str) -> tuple[str, ...]:
    """The distinct names ``text`` mentions, lower-cased, in order, at most MAX_MENTIONS."""
    if "@" not in text:  # the common case costs one scan
        return ()
    names: dict[str, None] = {}
    for match in _MENTION.finditer(text):
        name = match.group(1).rstrip(".-")
        if not name or len(name) > MAX_NAME:
            continue
        names[name.lower()] = None
        if len(names) == MAX_MENTIONS:
            break
    return tuple(names)


def excerpt(text: str) -> str:
    """The start of a message, as a ``mention`` event carries it."""
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
