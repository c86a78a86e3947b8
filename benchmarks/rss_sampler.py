"""Run a command and sample the RSS of every process it starts (driver, nanny, workers).

    python benchmarks/rss_sampler.py --every 0.5 --json peak.json -- streamembed backfill ...

Writes the peak RSS per process (with its command line), the peak of the whole tree and the
wall time; the command's exit status is passed through. Used for the full-size acceptance run
(benchmarks/RESULTS.md): "no process of the run above 3 GiB RSS (sampled)".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--json", required=True, help="where to write the peaks")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peaks: dict[int, dict[str, object]] = {}
    tree_peak = 0
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                rss = p.memory_info().rss
                if p.pid not in peaks:
                    peaks[p.pid] = {"cmd": " ".join(p.cmdline())[:160], "peak_rss_mib": 0.0}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            entry = peaks[p.pid]
            entry["peak_rss_mib"] = max(float(entry["peak_rss_mib"]), rss / 2**20)  # type: ignore[arg-type]
        tree_peak = max(tree_peak, total)
        time.sleep(args.every)
    wall = time.time() - t0
    top = max((float(e["peak_rss_mib"]) for e in peaks.values()), default=0.0)  # type: ignore[arg-type]
    record = {
        "command": cmd,
        "returncode": proc.returncode,
        "wall_seconds": round(wall, 1),
        "sample_seconds": args.every,
        "max_process_peak_rss_mib": round(top, 1),
        "tree_peak_rss_mib": round(tree_peak / 2**20, 1),
        "processes": sorted(peaks.values(), key=lambda e: -float(e["peak_rss_mib"])),  # type: ignore[arg-type]
    }
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1)
    print(
        f"[rss_sampler] {wall:.0f} s, max process peak {top:.0f} MiB, "
        f"tree peak {tree_peak / 2**20:.0f} MiB -> {args.json}",
        file=sys.stderr,
    )
    return int(proc.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
