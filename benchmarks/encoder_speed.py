"""How close each encoder's forward pass comes to this CPU's limit, per runtime.

    python benchmarks/encoder_speed.py [--archs resnet18,resnet50] [--json results/encoder/x.json]

For each architecture at the pipeline's window (``ingest.window`` + 2 x ``ingest.margin`` =
320 px, 12 bands, ``model.batch_size`` windows a pass, one thread as each worker runs it):
windows per second, GFLOP per window (PyTorch's FlopCounterMode: 2 FLOP per multiply-add of
convolutions and matrix products), GFLOP/s, and that as a share of two peaks of one core:

- **measured**: one-thread fp32 matrix product (2048 x 2048, PyTorch's BLAS), the most this
  core sustains on the easiest dense work;
- **nominal**: the core's fp32 FMA rate, FLOP per cycle of its vector unit x the clock that
  the measured product implies (a VM does not show its clock): given as FLOP per cycle.

Runtimes: PyTorch eager in NCHW, eager channels_last (the pipeline's for ResNets), ``torch.compile``
(inductor; channels_last for ResNets), ONNX Runtime (the dynamo exporter, CPU provider, one
thread) and OpenVINO (converted from PyTorch, f32 asked for); each is checked against eager NCHW
fp32 per cell (the cosine of every cell's embedding: the pipeline adopts only a runtime that
agrees to >= 0.999). ONNX Runtime and OpenVINO are not dependencies of the pipeline:
``pip install -e ".[bench]"`` brings them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

# fp32 FLOP per cycle per core: two 256-bit FMA pipes (8 lanes x 2 FLOP x 2); AMD Zen 4 runs
# AVX-512 on them as two halves, so AVX-512 does not double it.
FLOP_PER_CYCLE = {"zen4": 32}


def sgemm_peak(n: int = 2048, reps: int = 8) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _time(fn: Any, x: torch.Tensor, reps: int) -> float:
    """Best seconds of one pass over ``reps`` passes (after two warm ones)."""
    for _ in range(2):
        fn(x)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-cell cosine of two (n, dim, y, x) feature maps."""
    a = a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1]).astype(np.float64)
    b = b.transpose(0, 2, 3, 1).reshape(-1, b.shape[1]).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def measure(
    arch: str, batch: int, px: int, bands: int, reps: int, runtimes: list[str]
) -> list[dict]:
    from streamembed.runtime.backbones import build_backbone, is_vit
    from streamembed.runtime.runtimes import convert

    torch.manual_seed(0)
    model = build_backbone(arch, bands).eval()
    x = torch.randn(batch, bands, px, px)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.features(x)
    gflop_window = counter.get_total_flops() / batch / 1e9
    with torch.inference_mode():
        ref = model.features(x).numpy()
    nhwc = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    rows = []
    for name in runtimes:
        if name == "eager channels_last" and is_vit(arch):
            continue  # a ViT's one convolution is its patch embedding
        m = build_backbone(arch, bands).eval()
        m.load_state_dict(model.state_dict())
        prep: Any = lambda t: t  # noqa: E731
        if not is_vit(arch) and name != "eager NCHW":
            m = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            prep = nhwc
        t0 = time.perf_counter()
        try:
            if name == "torch.compile":
                fwd = torch.compile(m.features)
                with torch.inference_mode():
                    fwd(prep(x))
            elif name in ("onnxruntime", "openvino"):
                run = convert(m, x, name)  # the pipeline's conversion (model.runtime)
                fwd = lambda t, run=run: torch.from_numpy(run(t.numpy()))  # noqa: E731
                prep = lambda t: t  # noqa: E731
            else:
                fwd = m.features
        except Exception as err:  # a runtime that cannot take this model: say so, go on
            print(f"{arch} {name}: failed ({type(err).__name__}: {err})"[:300], flush=True)
            rows.append({"arch": arch, "runtime": name, "error": f"{type(err).__name__}"})
            continue
        t_prepare = time.perf_counter() - t0
        xin = prep(x)
        with torch.inference_mode():
            seconds = _time(fwd, xin, reps)
            out = fwd(xin).contiguous().numpy()
        cos = _cosines(ref, out)
        windows_s = batch / seconds
        rows.append(
            {
                "arch": arch,
                "runtime": name,
                "windows_per_s": round(windows_s, 2),
                "gflop_per_window": round(gflop_window, 2),
                "gflop_per_s": round(windows_s * gflop_window, 1),
                "min_cell_cosine": float(cos.min()),
                "max_abs_difference": float(np.abs(ref - out).max()),
                "prepare_seconds": round(t_prepare, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


RUNTIMES = ("eager NCHW", "eager channels_last", "torch.compile", "onnxruntime", "openvino")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="resnet18,resnet50,vit_small_patch16_224")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--px", type=int, default=320)
    ap.add_argument("--bands", type=int, default=12)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cpu", default="zen4", choices=sorted(FLOP_PER_CYCLE))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    peak = sgemm_peak()
    flop_cycle = FLOP_PER_CYCLE[args.cpu]
    print(f"one-thread sgemm {peak:.1f} GFLOP/s = {flop_cycle} FLOP/cycle at "
          f"{peak / flop_cycle:.2f} GHz", flush=True)  # fmt: skip
    rows = []
    for arch in args.archs.split(","):
        rows += measure(arch, args.batch, args.px, args.bands, args.reps, args.runtimes.split(","))
    for r in rows:
        if "gflop_per_s" in r:
            r["share_of_measured_peak"] = round(r["gflop_per_s"] / peak, 3)
    record = {
        "schema": "streamembed-bench-encoder-speed/1",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "sgemm_gflop_per_s": round(peak, 1),
        "flop_per_cycle": flop_cycle,
        "implied_ghz": round(peak / flop_cycle, 2),
        "batch": args.batch,
        "px": args.px,
        "bands": args.bands,
        "rows": rows,
    }
    print("| encoder | runtime | windows/s | GFLOP/window | GFLOP/s | share of peak | "
          "min cell cosine |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['arch']} | {r['runtime']} | failed: {r['error']} | | | | |")
            continue
        print(f"| {r['arch']} | {r['runtime']} | {r['windows_per_s']} | {r['gflop_per_window']} "
              f"| {r['gflop_per_s']} | {r['share_of_measured_peak']:.0%} "
              f"| {r['min_cell_cosine']:.6f} |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
