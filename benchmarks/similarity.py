"""Approximate nearest neighbours for `streamembed similar`: which library, measured.

    python benchmarks/similarity.py STORE [--tile T] [--queries 200] [--k 20] [--json out.json]

Every clear cell of every acquisition in the store's tile (decoded, L2-normalised, so cosine is
an inner product) is indexed by USearch (HNSW, f16 vectors) and FAISS (HNSW flat, f32), and
both are compared with exact search (NumPy matrix products) on random query cells: recall@k
against exact, query milliseconds, build seconds, index bytes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def load(store_path: str, tile: str | None, min_clear: float) -> np.ndarray:
    from streamembed.store import EmbeddingStore

    store = EmbeddingStore(store_path)
    tile = tile or store.tiles()[0]
    ds = store.open_dataset(tile)
    parts = []
    for i in range(ds.sizes["time"]):
        emb = ds.embedding.isel(time=i).values.reshape(-1, ds.sizes["dim"]).astype(np.float32)
        keep = ds.clear.isel(time=i).values.reshape(-1) >= min_clear
        parts.append(emb[keep])
    vecs = np.concatenate(parts)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return vecs


def exact(vecs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = []
    for q in queries:
        sims = vecs @ q
        top = np.argpartition(-sims, k)[:k]
        out.append(top[np.argsort(-sims[top])])
    return np.array(out), (time.perf_counter() - t0) / len(queries) * 1000


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def bench_usearch(vecs: np.ndarray, queries: np.ndarray, k: int) -> dict[str, float]:
    from usearch.index import Index

    index = Index(ndim=vecs.shape[1], metric="ip", dtype="f16", connectivity=16,
                  expansion_add=128, expansion_search=64)  # fmt: skip
    t0 = time.perf_counter()
    index.add(np.arange(len(vecs), dtype=np.uint64), vecs)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = np.array([index.search(q, k).keys for q in queries])
    query_ms = (time.perf_counter() - t0) / len(queries) * 1000
    with tempfile.TemporaryDirectory() as tmp:
        index.save(f"{tmp}/i.usearch")
        size = Path(f"{tmp}/i.usearch").stat().st_size
    return {"build_s": build, "query_ms": query_ms, "bytes": size, "found": found}  # type: ignore[dict-item]


def bench_faiss(vecs: np.ndarray, queries: np.ndarray, k: int) -> dict[str, float]:
    import faiss

    index = faiss.IndexHNSWFlat(vecs.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    index.hnsw.efSearch = 64
    t0 = time.perf_counter()
    index.add(vecs)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = np.array([index.search(q[None], k)[1][0] for q in queries])
    query_ms = (time.perf_counter() - t0) / len(queries) * 1000
    size = faiss.serialize_index(index).nbytes
    return {"build_s": build, "query_ms": query_ms, "bytes": size, "found": found}  # type: ignore[dict-item]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("store")
    p.add_argument("--tile")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--min-clear", type=float, default=0.9)
    p.add_argument("--json")
    args = p.parse_args()
    vecs = load(args.store, args.tile, args.min_clear)
    rng = np.random.default_rng(0)
    queries = vecs[rng.choice(len(vecs), args.queries, replace=False)]
    truth, exact_ms = exact(vecs, queries, args.k)
    records = {"cells": len(vecs), "dim": vecs.shape[1], "k": args.k, "queries": args.queries,
               "exact_query_ms": exact_ms}  # fmt: skip
    for name, fn in (("usearch", bench_usearch), ("faiss", bench_faiss)):
        r = fn(vecs, queries, args.k)
        found = r.pop("found")
        records[name] = {**r, f"recall@{args.k}": recall(found, truth)}
        print(name, records[name], flush=True)
    print(json.dumps(records, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
