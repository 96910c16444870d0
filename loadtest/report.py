"""The JSON result file, the Markdown report and the PNG plots of one run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    import platform

    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def plot(result: dict[str, Any], path: Path, counter: str, latency: str) -> bool:
    """Throughput (``counter`` per second) and p99 ``latency`` over time, phases side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return False
    many = len(result["phases"]) > 12  # then no phase labels: see the Markdown table
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14 if many else 10, 6), sharex=True)
    offset = 0.0
    for i, phase in enumerate(result["phases"]):
        color = f"C{i % 10}"
        timeline = phase.get("timeline") or []
        if not timeline:
            continue
        xs = [offset + row["t"] for row in timeline]
        top.plot(xs, [row.get(counter, 0) for row in timeline], ".-", color=color, linewidth=1)
        lat = [(x, row.get(f"{latency}_p99_ms")) for x, row in zip(xs, timeline, strict=False)]
        lat = [(x, y) for x, y in lat if y is not None]
        if lat:
            bottom.plot([x for x, _ in lat], [y for _, y in lat], ".-", color=color, linewidth=1)
        if not many:
            top.axvline(offset, color="grey", linewidth=0.5)
            top.text(offset, 0, " " + phase["name"], rotation=90, fontsize=7, va="bottom")
        offset += max(phase.get("duration_s", 0), (timeline[-1]["t"] + 1) if timeline else 0)
    top.set_ylabel(f"{counter} / s")
    bottom.set_ylabel(f"p99 {latency} (ms)")
    bottom.set_yscale("log")
    bottom.set_xlabel("seconds (phases in order)")
    top.set_title(f"{result['scenario']}: throughput and p99 latency per second")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write(result: dict[str, Any], out_dir: Path, counter: str, latency: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = result["scenario"]
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=1, default=str))
    png = out_dir / f"{name}.png"
    has_plot = plot(result, png, counter, latency)
    lines = [
        f"# {name}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']['cpu_count']} CPUs, load average at start "
        f"{result['machine']['loadavg']}, {result['machine']['platform']}, "
        f"Python {result['machine']['python']}. Started {result['started']}.",
        "",
        "## Summary",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, value in result["summary"].items():
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Phases", ""]
    lines.append(
        "| phase | s | rates /s | latency p50 / p99 / p99.9 / max (ms) | node CPU % | load |"
    )
    lines.append("|---|---|---|---|---|---|")
    for phase in result["phases"]:
        rates = ", ".join(
            f"{k} {v:,.0f}" for k, v in phase["rates_per_s"].items() if not k.startswith("connect")
        )
        lats = "; ".join(
            f"{k} {v['p50_ms']:.2f} / {v['p99_ms']:.2f} / {v['p99_9_ms']:.2f} / {v['max_ms']:.1f}"
            for k, v in phase["latency"].items()
            if v.get("count")
        )
        node = phase.get("node", {})
        other = phase.get("cpu_pct", {})
        lines.append(
            f"| {phase['name']} | {phase['duration_s']:.1f} | {rates} | {lats} | "
            f"{node.get('cpu_pct', '')} / {other.get('postgres', '')} / "
            f"{other.get('generator', '')} | {phase.get('loadavg_after', '')} |"
        )
    if has_plot:
        lines += ["", f"![{name}]({png.name})"]
    if result.get("profile"):
        lines += ["", "## Profile of the node (py-spy, self time)", "", "```"]
        lines += result["profile"]["top"]
        lines += ["```"]
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return json_path


def main() -> None:
    """python -m loadtest.report RESULT.json ...: write the Markdown and the plot again."""
    import sys

    from .scenarios import SCENARIOS

    for name in sys.argv[1:]:
        path = Path(name)
        result = json.loads(path.read_text())
        _, counter, latency = SCENARIOS[result["scenario"]]
        write(result, path.parent, counter, latency)


if __name__ == "__main__":
    main()
