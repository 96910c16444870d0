"""``python -m compliance ACTION`` — the same as ``chatserver compliance ACTION``."""

from __future__ import annotations

import argparse

from .cli import register


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file (default: $CHATSERVER_CONFIG, else built-in defaults)",
    )
    parser = argparse.ArgumentParser(prog="python -m compliance")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub, common)
    args = parser.parse_args(["compliance", *(argv if argv is not None else _argv())])
    args.func(args)


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
