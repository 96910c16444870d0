"""python -m loadtest SCENARIO [options]: the load generator and benchmarks (issue 7).

Scenarios: ingest, fanout, connections, join, reference and pool (``--nodes N`` pool members).
By default the tool starts what it measures: a throwaway PostgreSQL cluster and one node
(``python -m chatserver run``); ``--target HOST:PORT --database-url URL`` measures a running node
instead. Results go to ``--out`` (default ``loadtest/out/``, ignored by git, so a run leaves the
tree clean): ``SCENARIO.json``, ``SCENARIO.md`` and ``SCENARIO.png``. Raw output is not tracked: the
published numbers, with their commands and commits, are in loadtest/RESULTS.md. See
loadtest/README.md.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from . import report
from .scenarios import SCENARIOS
from .stack import Stack

# Where a run writes when --out is not given: ignored by git (.gitignore).
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="result folder (default: loadtest/out/)"
    )
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--sources", type=int, default=4, help="127.0.0.x source addresses")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase")
    p.add_argument("--users", type=int, default=0, help="simulated users (scenario default)")
    p.add_argument("--rooms", type=int, default=0, help="rooms (scenario default)")
    p.add_argument("--window", type=int, default=16, help="posts in flight per connection")
    p.add_argument("--text-bytes", type=int, default=100, help="message text size")
    p.add_argument("--members", default="100,1000,10000", help="fanout: room sizes")
    p.add_argument("--transport", choices=["tcp", "websocket", "both"], default="both")
    p.add_argument("--step", type=float, default=3.0, help="fanout: seconds per rate step")
    p.add_argument("--steps", type=int, default=8, help="fanout: most rate steps")
    p.add_argument("--factor", type=float, default=1.6, help="fanout: rate growth per step")
    p.add_argument("--connections", type=int, default=15_000, help="connections: how many")
    p.add_argument("--idle", type=float, default=10.0, help="connections: idle seconds")
    p.add_argument("--ping-interval", type=float, default=30.0, help="connections: keep-alive")
    p.add_argument(
        "--same-user", action="store_true", help="connections: all as one user (one session)"
    )
    p.add_argument("--scales", default="10", help="reference: multiples of its rates")
    p.add_argument("--profile", action="store_true", help="py-spy the node in the main phase")
    p.add_argument("--target", help="HOST:PORT of a running node (do not start one)")
    p.add_argument("--target-ws-port", type=int, default=0, help="its WebSocket port")
    p.add_argument("--database-url", help="the store to provision users and rooms in")
    p.add_argument("--nodes", type=int, default=1, help="nodes to start (> 1 needs the pool)")
    p.add_argument(
        "--server-ref", help="run the node from this git commit (default: the working tree)"
    )
    p.add_argument(
        "--node-gc-threshold", type=int, default=0, help="experiment: the node's gc threshold 0"
    )
    p.add_argument(
        "--connect-only", action="store_true", help="pool: connections only, no room traffic"
    )
    p.add_argument("--no-ceiling", action="store_true", help="fanout: skip the raw ceiling")
    p.add_argument("--no-fsync", action="store_true", help="PostgreSQL fsync off (not durable)")
    return p


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.target and not args.database_url:
        raise SystemExit("--target needs --database-url (to provision the simulated users)")
    run, counter, latency = SCENARIOS[args.scenario]
    env = {"ws_port": str(args.target_ws_port)} if args.target_ws_port else {}
    stack = Stack(
        target=args.target,
        database_url=args.database_url,
        nodes=args.nodes,
        fsync=not args.no_fsync,
        node_env=env if args.target else None,
        server_ref=args.server_ref,
        node_gc_threshold=args.node_gc_threshold,
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    machine = report.machine()
    try:
        result = await run(args, stack)
    finally:
        stack.stop()
    result = {
        "scenario": args.scenario,
        "command": "python -m loadtest " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "started": started,
        "machine": machine,
        "loadavg_end": [round(x, 2) for x in __import__("os").getloadavg()],
        "store": "PostgreSQL (throwaway cluster)" if not args.database_url else "given",
        "fsync": not args.no_fsync,
        "server_commit": stack.server_commit,
        "server_source": args.server_ref or "working tree",
        "node_gc_threshold": args.node_gc_threshold or None,
        **result,
    }
    path = report.write(result, args.out, counter, latency)
    print(f"result: {path}", file=sys.stderr)
    for key, value in result["summary"].items():
        print(f"  {key}: {value}")
    return result


def entry() -> None:
    args = parser().parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(main(args))


if __name__ == "__main__":
    entry()
