"""Bytes per full-tile acquisition for each embedding dtype and codec, from a real store.

    python benchmarks/storage_budget.py STORE [--tile T] [--json results/storage/storage-budget.json]

Takes one committed acquisition of ``STORE`` (e.g. the full-size backfill's
``out-full/embeddings.zarr``: a seeded ResNet-50's 2048-d features of a 10980 px product) and
writes it again through ``EmbeddingStore`` under every ``store.dtype`` x ``store.compression``,
then reads it back: bytes of the embedding variables, seconds to write and to read, and the
error against the source (relative RMS error, worst cosine distance of a cell, and the error of
the per-cell distance to the tile's mean vector, which is what the statistics score).

The source is float16, so a float32 copy holds widened float16 values: its uncompressed size is
exact, its compressed size flatters float32 (13 zero mantissa bits per value).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamembed.config import StoreConfig
from streamembed.outputs.store import EmbeddingBatch, EmbeddingStore, Provenance
from streamembed.storage import tree_bytes

DTYPES = ("float32", "float16", "int8")
CODECS = ("none", "zstd", "blosc-zstd-shuffle")


def _errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    r = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    g = got.reshape(-1, got.shape[-1]).astype(np.float64)
    ok = np.isfinite(r).all(axis=1)
    r, g = r[ok], g[ok]
    rms = float(np.sqrt(np.mean((g - r) ** 2)) / np.sqrt(np.mean(r**2)))
    cos = 1 - np.sum(r * g, axis=1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1))
    centre = r.mean(axis=0)
    dr = np.linalg.norm(r - centre, axis=1)
    dg = np.linalg.norm(g - centre, axis=1)
    return {
        "relative_rms_error": rms,
        "max_cosine_distance": float(np.nanmax(cos)),
        "distance_relative_error_p99": float(np.percentile(np.abs(dg - dr) / dr, 99)),
    }


def measure(source: str, tile: str | None) -> list[dict[str, Any]]:
    src = EmbeddingStore(source)
    tile = tile or src.tiles()[0]
    grid = src.grid(tile)
    assert grid is not None
    acq = src.read(tile, src.acquisition_ids(tile)[0])
    emb = acq.embedding.astype(np.float32)
    ds = src.open_dataset(tile)
    attrs = ds.attrs
    prov = Provenance(
        attrs["model_id"], attrs["model_weights"], bool(attrs["model_seeded"]),
        attrs["model_arch"], tuple(attrs["bands"]), attrs["normalisation"],
        int(attrs["window_px"]), int(attrs["margin_px"]), tuple(attrs["scl_mask_classes"]),
    )  # fmt: skip
    batch = EmbeddingBatch(
        acq.acquisition_id, tile, acq.time, grid, emb, acq.clear, acq.snow, acq.indices, prov
    )
    records = []
    with tempfile.TemporaryDirectory(prefix="storage-budget-") as tmp:
        for dtype in DTYPES:
            for codec in CODECS:
                root = Path(tmp) / f"{dtype}-{codec}"
                store = EmbeddingStore(root, StoreConfig(dtype=dtype, compression=codec))  # type: ignore[arg-type]
                t0 = time.perf_counter()
                store.append(batch)
                write_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                back = store.read(tile, acq.acquisition_id).embedding
                read_s = time.perf_counter() - t0
                group = root / tile
                nbytes = sum(
                    tree_bytes(group / name)
                    for name in ("embedding", "embedding_scale", "embedding_offset")
                )
                raw = emb.size * np.dtype(dtype).itemsize
                rec = {
                    "dtype": dtype,
                    "compression": codec,
                    "cells": int(emb.shape[0] * emb.shape[1]),
                    "dim": int(emb.shape[-1]),
                    "embedding_bytes": int(nbytes),
                    "ratio_vs_uncompressed_same_dtype": raw / nbytes,
                    "write_s": write_s,
                    "read_s": read_s,
                    **_errors(emb, back),
                }
                records.append(rec)
                print(json.dumps(rec), flush=True)
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("--tile")
    parser.add_argument("--json")
    args = parser.parse_args()
    records = measure(args.store, args.tile)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    print("\n| dtype | codec | MB per acquisition | ratio | write s | read s | rel. RMS error | "
          "worst cosine dist. | p99 distance error |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['dtype']} | {r['compression']} | {r['embedding_bytes'] / 1e6:.0f} | "
            f"{r['ratio_vs_uncompressed_same_dtype']:.2f} | {r['write_s']:.1f} | "
            f"{r['read_s']:.1f} | {r['relative_rms_error']:.1e} | "
            f"{r['max_cosine_distance']:.1e} | {r['distance_relative_error_p99']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
