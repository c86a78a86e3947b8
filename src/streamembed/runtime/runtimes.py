"""Where a backbone's forward pass runs on a CPU: PyTorch itself, OpenVINO or ONNX Runtime.

The weights are always loaded into the PyTorch backbone (backbones.py, checkpoints.py); the
other runtimes take that model as it is, converted once per worker and per window shape
(the batch dimension stays free), so what they compute is the same network: each conversion is
checked against PyTorch when it is made (on a probe of reflectance-like noise, every cell's
cosine >= 0.999, else the run is refused with the fix). benchmarks/RESULTS.md, "Encoder speed", measures them; the fastest
that agrees is the default (``model.runtime``).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "openvino", "onnxruntime")
# What a converted runtime needs installed, as pip names it.
_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime onnx onnxscript"}
MIN_CELL_COSINE = 0.999


class RuntimeUnavailable(RuntimeError):
    """The configured runtime is not installed or cannot take this model."""


class _Features(torch.nn.Module):
    """A backbone's per-cell ``features`` as its ``forward``: what the converters trace."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)  # type: ignore[operator]


Forward = Callable[[np.ndarray], np.ndarray]


def _openvino(model: torch.nn.Module, example: torch.Tensor) -> Forward:
    import openvino as ov

    # Shapes from the example alone: naming the input's shape (``input=``) made the ViT's
    # position-embedding resampling differ from PyTorch by 0.5 % (1.5e-6 without).
    # The trace fixes Python-level branches on shapes (the ViT's position-grid check): right
    # here, since each conversion is for one pass shape. Its TracerWarning would only alarm.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = ov.convert_model(_Features(model), example_input=example)
    # f32 asked for: on a CPU with bf16 units OpenVINO would otherwise compute in bf16. No
    # pinning: each Dask worker process pins its threads from core 0, so two workers shared
    # one core (2.8 windows/s each against 5.7 unpinned, ResNet-50, two workers, this VM).
    compiled = ov.Core().compile_model(
        converted, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                           "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False},
    )  # fmt: skip
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[0], np.float32, copy=True)

    return run


def _onnxruntime(model: torch.nn.Module, example: torch.Tensor) -> Forward:
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp(prefix="streamembed-onnx-")) / "encoder.onnx"
    torch.onnx.export(_Features(model), (example,), str(path), dynamo=True, optimize=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: x})[0], np.float32)

    return run


def convert(model: torch.nn.Module, example: torch.Tensor, runtime: str) -> Forward:
    """``model.features`` as ``runtime`` runs it, for inputs shaped like ``example``."""
    if runtime == "openvino":
        return _openvino(model, example)
    if runtime == "onnxruntime":
        return _onnxruntime(model, example)
    raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")


def _worst_cell_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The least cosine between two (n, dim, y, x) maps' cell vectors; cells whose vectors are
    both (near) zero agree (a ReLU map of a blank window is all zeros)."""
    a = np.moveaxis(a, 1, -1).reshape(-1, a.shape[1]).astype(np.float64)
    b = np.moveaxis(b, 1, -1).reshape(-1, b.shape[1]).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    tiny = 1e-6 * max(float(na.max(initial=0.0)), float(nb.max(initial=0.0)), 1e-30)
    both_zero = (na <= tiny) & (nb <= tiny)
    cos = np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(na * nb, 1e-300))
    return float(cos.min(initial=1.0))


class ConvertedBackbone:
    """``model.features`` run by ``runtime``, converted per pass shape on first use and checked
    against PyTorch on a probe."""

    def __init__(self, model: torch.nn.Module, runtime: str):
        if runtime not in RUNTIMES[1:]:
            raise ValueError(f"unknown runtime {runtime!r}")
        # Checked here, when the worker builds its encoder, not at the first block.
        if importlib.util.find_spec(runtime) is None:
            raise RuntimeUnavailable(
                f"model.runtime {runtime}: the {runtime} package is not installed here "
                f"(pip install {_PACKAGES[runtime]}, or set model.runtime: torch)"
            )
        self.model = model
        self.runtime = runtime
        self._forwards: dict[tuple[int, ...], Forward] = {}
        self.convert_seconds = 0.0

    def features(self, x: np.ndarray) -> np.ndarray:
        key = tuple(x.shape)
        fwd = self._forwards.get(key)
        if fwd is not None:
            return fwd(np.ascontiguousarray(x, np.float32))
        t0 = time.perf_counter()
        # The conversion is checked on a probe of reflectance-like noise, not on the data: a
        # pass of blank windows (nodata at a tile's edge) has near-zero cells whose cosines
        # say nothing about the network.
        probe = np.random.default_rng(0).uniform(0.0, 0.4, x.shape).astype(np.float32)
        fwd = convert(self.model, torch.from_numpy(probe), self.runtime)
        self.convert_seconds += time.perf_counter() - t0
        with torch.inference_mode():
            want = self.model.features(torch.from_numpy(probe)).float().numpy()  # type: ignore[operator]
        worst = _worst_cell_cosine(fwd(probe), want)
        if not worst >= MIN_CELL_COSINE:
            raise RuntimeUnavailable(
                f"model.runtime {self.runtime}: its conversion disagrees with PyTorch (a cell's "
                f"cosine {worst:.6f} < {MIN_CELL_COSINE}); set model.runtime: torch"
            )
        log.info("%s: %s window shape %s converted in %.1f s (worst cell cosine vs PyTorch "
                 "1 - %.1e)", self.runtime, type(self.model).__name__, key,
                 time.perf_counter() - t0, 1 - worst)  # fmt: skip
        self._forwards[key] = fwd
        return fwd(np.ascontiguousarray(x, np.float32))
