"""``chatserver compliance …`` subcommands."""

from __future__ import annotations

import argparse


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``compliance`` command group to the top-level parser."""
