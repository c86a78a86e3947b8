"""Where an item may point: the schemes and hosts an item's asset hrefs may reach.

Items come from catalogues the user does not control. An item served over HTTP that names a
worker's own files (``/etc/...``, ``file:///...``) or an arbitrary host would have the workers
open them with GDAL, so an item from a remote source may reference only http(s) and object-store
URLs, and only on the source's own host and the hosts of ``source.allowed_hosts`` (by default
the object stores the public Sentinel-2 catalogues serve their rasters from:
``config.DEFAULT_ALLOWED_HOSTS``). A local source
(a folder of items the user put there) may reference anything, local paths included.

A refused href fails its item at discovery, a ``source`` failure naming the item, the href and
the setting to change; the other items of the run go on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatch
from urllib.parse import urlparse

REMOTE_SCHEMES = frozenset({"http", "https", "s3", "gs", "az"})


@dataclass(frozen=True)
class Reach:
    """The hrefs an item from one source may name; ``hosts`` are fnmatch patterns (``*``:
    any host); ``None`` for ``schemes``: anything, local paths too (a local source)."""

    source: str
    schemes: frozenset[str] | None = None
    hosts: tuple[str, ...] = ("*",)

    @classmethod
    def for_source(cls, path: str, remote: bool, allowed_hosts: Iterable[str]) -> Reach:
        """A remote source reaches its own host and ``allowed_hosts``; a local one anything."""
        if not remote:
            return cls(path)
        own = (urlparse(path).hostname or "").lower()
        return cls(path, REMOTE_SCHEMES, (own, *(h.lower() for h in allowed_hosts)))

    def refusal(self, href: str) -> str | None:
        """Why ``href`` may not be read for an item of this source, or None."""
        if self.schemes is None:
            return None
        url = urlparse(href)
        scheme = url.scheme.lower()
        if len(scheme) <= 1:  # a path (a one-letter scheme is a Windows drive)
            return (
                f"a local path, and an item from the remote source {self.source} may name only "
                f"{'/'.join(sorted(self.schemes))} URLs (local files: a folder source)"
            )
        if scheme not in self.schemes:
            return (
                f"a {scheme}:// URL, and an item from the remote source {self.source} may name "
                f"only {'/'.join(sorted(self.schemes))} URLs (local files: a folder source)"
            )
        host = (url.hostname or "").lower()
        if not any(fnmatch(host, pattern) for pattern in self.hosts):
            return (
                f"on host {host or '(none)'}, outside those an item from {self.source} may "
                f"reach ({', '.join(self.hosts)}); add it to source.allowed_hosts if you trust "
                "it"
            )
        return None
