"""``chatserver compliance …`` subcommands: ``run`` (the writer), ``export``, ``verify``,
``purge`` (the archive's own retention)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from sqlalchemy.exc import SQLAlchemyError


def _config(args: argparse.Namespace) -> Any:
    from chatserver.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 2) -> None:
    print(f"chatserver: {message}", file=sys.stderr)
    raise SystemExit(code)


def _run(main: Any) -> Any:
    import uvloop

    return uvloop.run(main)


def cmd_run(args: argparse.Namespace) -> None:
    from chatserver.logs import configure

    from .checkpoint import CheckpointError
    from .schema import ComplianceSchemaError
    from .writer import UNAVAILABLE_ERRORS, run

    config = _config(args)
    configure(args.log_level, config.log.format, config.node.name, False)

    async def main() -> None:
        from .endpoint import WriterEndpoint, WriterStats

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stats = WriterStats()
        endpoint = WriterEndpoint(config, stats, args.poll_s) if args.metrics else None
        try:
            if endpoint is not None:
                host, port = await endpoint.start(args.metrics)
                print(f"chatserver: compliance writer metrics on http://{host}:{port}/metrics")
            await run(
                config,
                stop,
                poll_s=args.poll_s,
                batch=args.batch,
                export=not args.no_export,
                once=args.once,
                stats=stats,
            )
        finally:
            if endpoint is not None:
                await endpoint.stop()

    interval = config.compliance.run_interval_s
    print(
        f"chatserver: compliance writer on node {config.node.name}: events are stored as they"
        f" come; the {config.compliance.adapter} adapter exports to {config.compliance.output_dir}"
        f" every {interval} s (compliance.run_interval_s; `chatserver compliance export` runs it"
        " now)",
        flush=True,
    )
    try:
        _run(main())
    except (ComplianceSchemaError, CheckpointError) as exc:
        _fail(str(exc))
    except UNAVAILABLE_ERRORS as exc:
        _fail(f"compliance writer: {exc}", 1)


def cmd_export(args: argparse.Namespace) -> None:
    from chatserver.store.db import Database

    from .adapters import UnknownAdapter, export_once
    from .checkpoint import CheckpointError
    from .schema import ComplianceSchemaError, prepare

    config = _config(args)

    async def main() -> None:
        content = Database(config.database.url, pool_size=1)
        comp = Database(config.compliance.database_url, pool_size=1)
        try:
            await prepare(comp, (config.compliance.adapter,))
            result = await export_once(config, comp, content)
        finally:
            await content.close()
            await comp.close()
        print(f"chatserver: exported {result.events} events to {len(result.files)} files")
        for path in result.files:
            print(path)

    try:
        _run(main())
    except (ComplianceSchemaError, UnknownAdapter, CheckpointError) as exc:
        _fail(str(exc))
    except (OSError, SQLAlchemyError) as exc:
        _fail(f"compliance export: {exc}", 1)


def _latest_checkpoint(args: argparse.Namespace, config: Any) -> Any:
    """The signature-checked checkpoint with the highest seq among ``--checkpoint`` files."""
    from .checkpoint import CheckpointError, check_signature, load_public, read

    if not args.checkpoint:
        return None
    key_path = args.public_key or config.compliance.signing_key
    if not key_path:
        _fail("--checkpoint needs --public-key FILE (or [compliance] signing_key)")
    try:
        public = load_public(key_path)
        latest = None
        for path in args.checkpoint:
            found = read(path)
            check_signature(found, public)
            if latest is None or found.seq > latest.seq:
                latest = found
    except (CheckpointError, OSError) as exc:
        print(f"checkpoint: FAILED: {exc}\nresult: FAILED")
        raise SystemExit(1) from None
    return latest


def cmd_verify(args: argparse.Namespace) -> None:
    from chatserver.store.db import Database

    from .schema import ComplianceSchemaError, prepare
    from .verify import verify

    config = _config(args)
    checkpoint = _latest_checkpoint(args, config)

    async def main() -> bool:
        content = Database(config.database.url, pool_size=1)
        comp = Database(config.compliance.database_url, pool_size=1)
        try:
            await prepare(comp, (config.compliance.adapter,))
            report = await verify(comp, content, since_ms=args.since_ms, checkpoint=checkpoint)
        finally:
            await content.close()
            await comp.close()
        if args.json:
            print(json.dumps(report.as_dict(), indent=2))
        else:
            print("\n".join(report.lines()))
        return report.ok

    try:
        ok = _run(main())
    except ComplianceSchemaError as exc:
        _fail(str(exc))
    except (OSError, SQLAlchemyError) as exc:
        _fail(f"compliance verify: {exc}", 1)
    raise SystemExit(0 if ok else 1)


def cmd_purge(args: argparse.Namespace) -> None:
    from chatserver.store.db import Database, now_ms

    from .retention import purge
    from .schema import ComplianceSchemaError, prepare

    config = _config(args)
    days = args.days if args.days is not None else config.retention.compliance_days

    async def main() -> None:
        content = Database(config.database.url, pool_size=1)
        comp = Database(config.compliance.database_url, pool_size=1)
        try:
            await prepare(comp, (config.compliance.adapter,))
            report = await purge(comp, content, days, now_ms())
        finally:
            await content.close()
            await comp.close()
        print(
            f"chatserver: {report.pruned} events older than {days} days pruned;"
            f" kept {report.held} under legal hold and {report.unexported} not yet exported"
        )

    if days <= 0:
        print("chatserver: retention.compliance_days is 0: the archive keeps everything")
        return
    try:
        _run(main())
    except ComplianceSchemaError as exc:
        _fail(str(exc))
    except (OSError, SQLAlchemyError) as exc:
        _fail(f"compliance purge: {exc}", 1)


def cmd_keygen(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .checkpoint import generate

    try:
        public = generate(Path(args.out))
    except FileExistsError:
        _fail(f"{args.out} exists; not overwriting a signing key")
    except OSError as exc:
        _fail(f"compliance keygen: {exc}", 1)
    print(
        f"chatserver: signing key written to {args.out} (keep it outside the compliance"
        f" database); public key {public}"
    )


def cmd_checkpoint(args: argparse.Namespace) -> None:
    from pathlib import Path

    from chatserver.store.db import Database

    from .checkpoint import CheckpointError, load_private, of_head
    from .schema import ComplianceSchemaError, prepare

    config = _config(args)
    if not config.compliance.signing_key:
        _fail("[compliance] signing_key is not set (create one with `compliance keygen`)")

    async def main() -> str:
        key = load_private(config.compliance.signing_key)
        comp = Database(config.compliance.database_url, pool_size=1)
        try:
            await prepare(comp, (config.compliance.adapter,))
            return (await of_head(comp, key)).to_json()
        finally:
            await comp.close()

    try:
        text = _run(main())
    except (ComplianceSchemaError, CheckpointError) as exc:
        _fail(str(exc))
    except (OSError, SQLAlchemyError) as exc:
        _fail(f"compliance checkpoint: {exc}", 1)
    if args.out:
        Path(args.out).write_text(text)
        print(f"chatserver: checkpoint written to {args.out}")
    else:
        print(text, end="")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``compliance`` command group to the top-level parser."""
    group = sub.add_parser("compliance", help="the compliance writer, export and verification")
    actions = group.add_subparsers(dest="compliance_command", required=True, metavar="ACTION")

    run = actions.add_parser(
        "run",
        parents=[common],
        help="move captured events to the compliance database; export every run_interval_s",
    )
    run.add_argument(
        "--poll-s", type=float, default=1.0, help="seconds between outbox polls (default: 1)"
    )
    run.add_argument("--batch", type=int, default=500, help="events per transaction (default: 500)")
    run.add_argument(
        "--no-export", action="store_true", help="only store events; never run the adapter"
    )
    run.add_argument("--once", action="store_true", help="drain the outbox, export once, and exit")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default="",
        help="serve /metrics (Prometheus) and /healthz on this address (default: none)",
    )
    run.set_defaults(func=cmd_run)

    export = actions.add_parser(
        "export", parents=[common], help="run the adapter once over every event not yet exported"
    )
    export.set_defaults(func=cmd_export)

    verify = actions.add_parser(
        "verify",
        parents=[common],
        help="check the hash chain and that every captured event and stored message is there",
    )
    verify.add_argument(
        "--since-ms",
        type=int,
        default=None,
        help="check messages stored since this time (default: the first captured event)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument(
        "--checkpoint",
        action="append",
        metavar="FILE",
        help="a signed checkpoint (repeatable): the archive must still reach the latest one",
    )
    verify.add_argument(
        "--public-key",
        metavar="FILE",
        help="the key checkpoints are checked with (default: [compliance] signing_key)",
    )
    verify.set_defaults(func=cmd_verify)

    purge = actions.add_parser(
        "purge",
        parents=[common],
        help="empty archived events older than retention.compliance_days (not under a hold)",
    )
    purge.add_argument("--days", type=int, default=None, help="instead of the setting")
    purge.set_defaults(func=cmd_purge)
    keygen = actions.add_parser(
        "keygen", parents=[common], help="create an Ed25519 key for signing checkpoints"
    )
    keygen.add_argument("--out", required=True, metavar="FILE", help="the private key to write")
    keygen.set_defaults(func=cmd_keygen)

    checkpoint = actions.add_parser(
        "checkpoint", parents=[common], help="print (or --out) a signed checkpoint of the head"
    )
    checkpoint.add_argument("--out", metavar="FILE", help="write it here instead of stdout")
    checkpoint.set_defaults(func=cmd_checkpoint)
