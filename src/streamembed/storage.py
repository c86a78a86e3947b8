"""Where outputs are written: a local folder or an object-store URL, behind one small surface.

A location is a path (``output``, ``/data/run``, ``file:///data/run``) or a URL of any fsspec
filesystem (``s3://bucket/prefix``, ``gs://…``, ``az://…``). Credentials and endpoints come
from the environment only (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, …): nothing here takes a key, so none
can reach config.yaml or a log line.

Every file an output reader may see is published whole: locally written to a hidden temporary
name and renamed, on an object store uploaded with the object made visible only when the upload
completes (a single PUT, or a multipart upload completed last), so a crash never leaves half a
file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .faults import crash_point


class StorageError(RuntimeError):
    """An output location cannot be used (no such bucket, no credentials, no driver)."""


def normalise(location: str | Path) -> str:
    """``file://`` URLs become plain paths; trailing slashes go."""
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return text.rstrip("/") or "/"


def is_remote(location: str | Path) -> bool:
    """Whether ``location`` is on an object store (a URL other than ``file://``)."""
    return "://" in normalise(location)


def join(location: str | Path, *parts: str) -> str:
    """``location`` with ``parts`` appended, in the location's own spelling."""
    base = normalise(location)
    if is_remote(base):
        return "/".join([base, *parts])
    return str(Path(base, *parts))


def filesystem(location: str | Path) -> tuple[Any, str]:
    """The fsspec filesystem holding ``location`` and the path on it."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(normalise(location))
    except (ImportError, ValueError) as err:
        raise StorageError(
            f"cannot open {location}: {err}; install the filesystem's package "
            "(s3fs for s3://, gcsfs for gs://, adlfs for az://)"
        ) from err


def exists(location: str | Path) -> bool:
    if not is_remote(location):
        return Path(normalise(location)).exists()
    fs, path = filesystem(location)
    return bool(fs.exists(path))


def read_bytes(location: str | Path) -> bytes:
    if not is_remote(location):
        return Path(normalise(location)).read_bytes()
    fs, path = filesystem(location)
    return bytes(fs.cat_file(path))


def glob(location: str | Path, pattern: str) -> list[str]:
    """Files under ``location`` matching ``pattern`` (``*``, ``tile=*/x.parquet``), sorted, as
    locations in ``location``'s spelling; hidden (dot) temporaries are never matched."""
    base = normalise(location)
    if not is_remote(base):
        return sorted(str(p) for p in Path(base).glob(pattern))
    fs, path = filesystem(base)
    scheme = base.split("://", 1)[0]
    fs.invalidate_cache(path)  # another writer (a worker) may have added objects since
    found = fs.glob(f"{path.rstrip('/')}/{pattern}")
    return sorted(f"{scheme}://{p}" for p in found)


def glob_stamped(location: str | Path, pattern: str) -> dict[str, str]:
    """``glob``'s files with a stamp that changes when a file is replaced under the same name
    (size and modification time; an object store's ETag), from one listing."""
    base = normalise(location)
    if not is_remote(base):
        out = {}
        for p in sorted(Path(base).glob(pattern)):
            try:
                st = p.stat()
            except FileNotFoundError:  # replaced or removed since the listing
                continue
            out[str(p)] = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        return out
    fs, path = filesystem(base)
    scheme = base.split("://", 1)[0]
    fs.invalidate_cache(path)
    found = fs.glob(f"{path.rstrip('/')}/{pattern}", detail=True)
    return {
        f"{scheme}://{p}": str(info.get("ETag") or info.get("LastModified") or info.get("size"))
        for p, info in sorted(found.items())
    }


def tree_bytes(location: str | Path) -> int:
    """Bytes of every file under ``location`` (0 when there is none)."""
    if not exists(location):
        return 0
    if not is_remote(location):
        return sum(p.stat().st_size for p in Path(normalise(location)).rglob("*") if p.is_file())
    fs, path = filesystem(location)
    fs.invalidate_cache(path)  # another writer may have added objects since the last listing
    return int(fs.du(path, total=True))


def remove_tree(location: str | Path) -> None:
    if not exists(location):
        return
    fs, path = filesystem(location)
    fs.rm(path, recursive=True)


def copy_tree(source: str | Path, target: str | Path) -> int:
    """Make ``target`` hold exactly the files of ``source`` (none: ``target`` removed), byte
    for byte; returns the bytes copied. Repeating it gives the same result, so a copy killed
    half way is simply done again.

    Locally each file is a hard link (no byte moves; the project's writers and zarr's replace a
    file by renaming a new one over it, never write into it, so a shared file is never changed
    under another name); on an object store the copy is the server's (nothing travels through
    this process).
    """
    remove_tree(target)
    if not exists(source):
        return 0
    if not is_remote(source):
        src, dst = Path(normalise(source)), Path(normalise(target))
        copied = 0
        for path in src.rglob("*"):
            if path.is_file():
                out = dst / path.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, out)
                except OSError:  # another filesystem, or one without links
                    out.write_bytes(path.read_bytes())
                copied += path.stat().st_size
        return copied
    fs, src_path = filesystem(source)
    _, dst_path = filesystem(target)
    fs.invalidate_cache(src_path)
    copied = int(fs.du(src_path, total=True))
    fs.copy(src_path, dst_path, recursive=True)
    fs.invalidate_cache(dst_path)
    return copied


def copy_file(source: str | Path, target: str | Path) -> None:
    """``target`` made a copy of the file ``source`` whole (a hard link locally, the
    server's copy on an object store; see ``copy_tree``)."""
    if not is_remote(source):
        src, dst = Path(normalise(source)), Path(normalise(target))
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            tmp.write_bytes(src.read_bytes())
        tmp.replace(dst)
        return
    fs, src_path = filesystem(source)
    _, dst_path = filesystem(target)
    fs.copy(src_path, dst_path)
    fs.invalidate_cache(dst_path)


def ensure_writable(location: str | Path) -> None:
    """Create ``location`` (a local folder) or check that its bucket answers, before a run
    spends an hour embedding into a place it cannot write."""
    if not is_remote(location):
        Path(normalise(location)).mkdir(parents=True, exist_ok=True)
        return
    fs, path = filesystem(location)
    bucket = path.split("/", 1)[0]
    try:
        fs.invalidate_cache(bucket)
        fs.info(bucket)
    except FileNotFoundError as err:
        raise StorageError(
            f"output {location}: the bucket {bucket} does not exist; create it first "
            "(or point --output at one you can write)"
        ) from err
    except PermissionError as err:
        raise StorageError(
            f"output {location}: access to bucket {bucket} was refused; check the credentials "
            "in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the provider's)"
        ) from err
    except OSError as err:
        raise StorageError(
            f"output {location}: the object store did not answer ({err}); check "
            "AWS_ENDPOINT_URL (or the provider's endpoint variable) and the network"
        ) from err


@contextmanager
def atomic_writer(location: str | Path, crash: str | None = None) -> Iterator[IO[bytes]]:
    """A binary file that appears under ``location`` only when the block ends without error.

    ``crash`` names the fault point between writing and publishing (the kill tests).
    """
    if not is_remote(location):
        path = Path(normalise(location))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
            if crash:
                crash_point(crash)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, path_str = filesystem(location)
    # autocommit off: the parts upload as they fill, the object exists only after commit().
    remote = fs.open(path_str, "wb", autocommit=False)
    try:
        yield remote
        remote.close()
        if crash:
            crash_point(crash)
        remote.commit()
    except BaseException:
        remote.discard()
        raise
    finally:
        fs.invalidate_cache(path_str)


@contextmanager
def open_input(location: str | Path) -> Iterator[IO[bytes]]:
    """``location`` opened for reading (seekable: NumPy archives and Parquet footers)."""
    if not is_remote(location):
        with open(normalise(location), "rb") as f:
            yield f
        return
    fs, path = filesystem(location)
    with fs.open(path, "rb") as f:
        yield f


def publish(location: str | Path, data: bytes, crash: str | None = None) -> None:
    """Write ``data`` whole under ``location`` (see ``atomic_writer``)."""
    with atomic_writer(location, crash) as f:
        f.write(data)
