"""Reporting: the summary row of benchmarks/RESULTS.md and the throughput/scaling plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .records import SCHEMA, BenchRecord

_TABLE_START = "<!-- bench-table:start -->"
_TABLE_END = "<!-- bench-table:end -->"
_HEADER = (
    "| profile | when | machine | workers | acq/s | km²/s | cells/s | raw bound acq/s | "
    "share of raw | bottleneck (non-encode) | peak worker MiB | long-run memory Δ | "
    "stats 128-d / 2048-d cell-updates/s/core, float16 as stored (share of copy) |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def table_row(record: BenchRecord) -> str:
    head = f"| {record.label} | {record.time[:16]} | {record.hardware.describe()} | "
    top = record.top_run
    if top is None:
        return head + " | ".join([record.gpu_note or "not measured"] + [""] * 9) + " |"
    change = (
        record.long_backfill.memory_first_to_last_quarter_change if record.long_backfill else None
    )
    # the actor hands the core the store's float16 as read
    stats = " / ".join(
        f"{s.cell_updates_per_s_per_core:.3g} ({s.share_of_copy:.0%})"
        for s in record.stats_core
        if s.embedding_dtype == "float16"
    )
    return head + (
        f"{top.workers} | {top.acquisitions_per_s:.3f} | {top.km2_per_s:.2f} | "
        f"{top.cells_per_s:.0f} | {top.raw_bound_acquisitions_per_s or 0:.3f} | "
        f"{top.share_of_raw_encoder or 0:.0%} | {record.bottleneck_stage} | "
        f"{top.peak_worker_memory_mib:.0f} | {'' if change is None else f'{change:+.1%}'} | "
        f"{stats} |"
    )


def update_results_md(path: Path, record: BenchRecord) -> None:
    """Add the record's row to the summary table (one row per profile: the latest replaces)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if _TABLE_START not in text:
        text += f"\n## Summary (`streamembed bench`)\n\n{_TABLE_START}\n{_HEADER}\n{_TABLE_END}\n"
    head, rest = text.split(_TABLE_START, 1)
    table, tail = rest.split(_TABLE_END, 1)
    rows = [ln for ln in table.strip().splitlines()[2:] if not ln.startswith(f"| {record.label} |")]
    rows.append(table_row(record))
    path.write_text(
        f"{head}{_TABLE_START}\n{_HEADER}\n" + "\n".join(rows) + f"\n{_TABLE_END}{tail}"
    )


def latest_records(results_dir: Path) -> dict[str, BenchRecord]:
    """The newest measured record of each profile in a results folder."""
    latest: dict[str, BenchRecord] = {}
    for path in sorted(results_dir.glob("*.json")):
        if json.loads(path.read_text()).get("schema", SCHEMA) != SCHEMA:
            continue  # another benchmark's record (the scale benchmark's)
        rec = BenchRecord.read(path)
        if rec.schema == SCHEMA and rec.runs:
            latest[rec.label] = rec
    return latest


def plot(results_dir: Path, png: Path) -> Path:
    """Pipeline vs raw-encoder throughput of the latest record per profile, and scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest = latest_records(results_dir)
    if not latest:
        raise ValueError(f"no benchmark records in {results_dir}; run streamembed bench first")
    tops = [r.top_run for r in latest.values() if r.top_run is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    x = np.arange(len(latest))
    raw = [t.raw_bound_acquisitions_per_s or 0.0 for t in tops]
    ax1.bar(x - 0.2, raw, 0.4, label="raw encoder bound", color="#bbbbbb")
    ax1.bar(x + 0.2, [t.acquisitions_per_s for t in tops], 0.4, label="whole pipeline",
            color="#1f78b4")  # fmt: skip
    ax1.set_xticks(x, list(latest))
    ax1.set_ylabel("acquisitions / s")
    ax1.set_title("Throughput (same run)")
    ax1.legend(fontsize=8)
    for label, rec in latest.items():
        ax2.plot([r.workers for r in rec.runs], [r.acquisitions_per_s for r in rec.runs], "o-",
                 label=label)  # fmt: skip
    ax2.set_xlabel("workers")
    ax2.set_ylabel("acquisitions / s")
    ax2.set_title("Scaling")
    ax2.legend(fontsize=8)
    return save_figure(fig, png)


def save_figure(fig: Any, png: Path) -> Path:
    """Lay out, write and close a benchmark figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png
