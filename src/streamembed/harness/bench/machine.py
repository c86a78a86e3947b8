"""The machine and software a benchmark record was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from .records import Gpu, Hardware

_PACKAGES = ("streamembed", "torch", "numpy", "dask", "distributed", "zarr", "xarray",
             "rasterio", "pyarrow")  # fmt: skip


def hardware() -> Hardware:
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return Hardware(
        cpu=cpu,
        cores=os.cpu_count() or 1,
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
        gpus=_gpus(),
        hostname=platform.node(),
        platform=platform.platform(),
    )


def _gpus() -> tuple[Gpu, ...]:
    try:
        import torch

        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch CUDA runtime: no GPU to report
        return ()
    return tuple(Gpu(p.name, round(p.total_memory / 2**30, 1)) for p in props)


def software() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs; 64 MiB where it cannot be read)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        try:
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except ValueError:
            continue
    return max(sizes, default=64 << 20)
