"""What every ``chatserver`` subcommand shares: failing with a message, reading the
configuration. Imported by the top-level command and by the subcommands it registers, so they
need not import it (nor it them, beyond registering)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import NoReturn

from .config import Config, ConfigError, load_config


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``chatserver: MESSAGE`` to standard error and exit with ``code``."""
    print(f"chatserver: {message}", file=sys.stderr)
    raise SystemExit(code)


def config_of(args: argparse.Namespace) -> Config:
    """The configuration ``--config`` (or ``$CHATSERVER_CONFIG``) names; exit 2 if it is bad."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        fail(str(exc))


def cli_actor() -> str:
    """Who the audit log names for a change the command line makes in the store itself:
    ``cli:`` and the operating-system user who ran it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no name for this uid (a container, say)
        return f"cli:uid {os.getuid()}"
