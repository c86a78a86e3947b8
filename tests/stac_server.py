"""A small STAC API on 127.0.0.1 for tests: real HTTP, real item JSON, real rasters.

It implements what pystac-client and GDAL use: the landing page with conformance classes,
collections, ``/search`` (GET and POST, ``collections``/``bbox``/``datetime``/``limit``, paged
with ``next`` links), single items, and the raster files under ``/files/`` with HTTP range
requests (GDAL reads COGs by ranges). Items are published in batches, as an archive grows.
Faults are injected per path prefix: an HTTP status (429 with ``Retry-After``, 5xx), a dropped
connection, or a delay
longer than the client's timeout. Raster reads can require a bearer token.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]


@dataclass
class Fault:
    prefix: str
    status: int | None  # None: delay only
    delay: float
    remaining: int


def _when(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


class StacServer:
    """Start with ``start()``; ``url`` is the API root; ``publish(items)`` adds a batch."""

    def __init__(self, files_root: Path, collection: str = "sentinel-2-l2a", token: str = ""):
        self.files_root = Path(files_root)
        self.collection = collection
        self.token = token
        self.items: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ control

    def start(self) -> StacServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def file_url(self, path: Path) -> str:
        return f"{self.url}/files/{Path(path).resolve().relative_to(self.files_root.resolve())}"

    def publish(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            for item in items:
                item = dict(item)
                item["collection"] = self.collection
                item["links"] = [
                    {
                        "rel": "self",
                        "href": f"{self.url}/collections/{self.collection}/items/{item['id']}",
                        "type": "application/geo+json",
                    }
                ]
                self.items.append(item)

    def fail(self, prefix: str, status: int, times: int = 1) -> None:
        """The next ``times`` requests under ``prefix`` get ``status`` (0: the connection is
        dropped without a response)."""
        self.faults.append(Fault(prefix, status, 0.0, times))

    def delay(self, prefix: str, seconds: float, times: int = 1) -> None:
        self.faults.append(Fault(prefix, None, seconds, times))

    def hits(self, prefix: str, status: int | None = None) -> int:
        return sum(1 for _, p, s in self.requests if p.startswith(prefix) and status in (None, s))

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.remaining > 0 and path.startswith(f.prefix):
                    f.remaining -= 1
                    return f
        return None

    # ------------------------------------------------------------ search

    def search(self, params: dict[str, Any]) -> dict[str, Any]:
        collections = params.get("collections") or [self.collection]
        if isinstance(collections, str):
            collections = collections.split(",")
        bbox = params.get("bbox")
        if isinstance(bbox, str):
            bbox = [float(v) for v in bbox.split(",")]
        start = end = None
        if params.get("datetime"):
            lo, _, hi = str(params["datetime"]).partition("/")
            start = _when(lo) if lo not in ("", "..") else None
            end = _when(hi) if hi not in ("", "..") else None
        limit = int(params.get("limit") or 10)
        offset = int(params.get("token") or 0)
        with self._lock:
            items = list(self.items)
        hits = []
        for item in sorted(items, key=lambda i: (i["properties"]["datetime"], i["id"])):
            when = _when(item["properties"]["datetime"])
            if item["collection"] not in collections:
                continue
            if (start and when < start) or (end and when > end):
                continue
            if bbox:
                b = item["bbox"]
                if b[0] > bbox[2] or b[2] < bbox[0] or b[1] > bbox[3] or b[3] < bbox[1]:
                    continue
            hits.append(item)
        page = hits[offset : offset + limit]
        links = []
        if offset + limit < len(hits):
            query = {k: v for k, v in params.items() if v is not None and k != "token"}
            for key in ("collections", "bbox"):
                if isinstance(query.get(key), list):
                    query[key] = ",".join(str(v) for v in query[key])
            query["token"] = str(offset + limit)
            links.append(
                {"rel": "next", "href": f"{self.url}/search?{urlencode(query)}", "method": "GET"}
            )
        return {
            "type": "FeatureCollection",
            "features": page,
            "links": links,
            "numberMatched": len(hits),
            "numberReturned": len(page),
        }

    def landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog",
            "id": "streamembed-test",
            "stac_version": "1.0.0",
            "description": "STAC API for streamembed tests",
            "conformsTo": CONFORMS,
            "links": [
                {"rel": "self", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "data", "href": f"{self.url}/collections", "type": "application/json"},
                {
                    "rel": "search",
                    "href": f"{self.url}/search",
                    "type": "application/geo+json",
                    "method": "GET",
                },
                {
                    "rel": "search",
                    "href": f"{self.url}/search",
                    "type": "application/geo+json",
                    "method": "POST",
                },
            ],
        }

    def collection_doc(self) -> dict[str, Any]:
        return {
            "type": "Collection",
            "id": self.collection,
            "stac_version": "1.0.0",
            "description": "Sentinel-2 L2A (test)",
            "license": "proprietary",
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [[None, None]]},
            },
            "links": [{"rel": "self", "href": f"{self.url}/collections/{self.collection}"}],
        }


class _Handler(BaseHTTPRequestHandler):
    owner: StacServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None):
        self.owner.requests.append((self.command, self.path, status))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode(), "application/geo+json")

    def _fault(self) -> bool:
        fault = self.owner._take_fault(self.path)
        if fault is None:
            return False
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status is None:
            return False
        if fault.status == 0:  # a dropped connection: closed with no response at all
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return True
        self._send(
            fault.status,
            json.dumps({"code": fault.status, "description": "injected"}).encode(),
            "application/json",
            {"Retry-After": "0"} if fault.status == 429 else None,
        )
        return True

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self._fault():
            return
        url = urlparse(self.path)
        path = url.path.rstrip("/") or "/"
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        o = self.owner
        if path == "/":
            self._json(200, o.landing())
        elif path == "/collections":
            self._json(200, {"collections": [o.collection_doc()], "links": []})
        elif path == f"/collections/{o.collection}":
            self._json(200, o.collection_doc())
        elif path == "/search":
            self._json(200, o.search(params))
        elif path.startswith(f"/collections/{o.collection}/items/"):
            item_id = path.rsplit("/", 1)[1]
            match = [i for i in o.items if i["id"] == item_id]
            self._json(200, match[0]) if match else self._json(404, {"code": "NotFound"})
        elif path.startswith("/files/"):
            self._file(path[len("/files/") :])
        else:
            self._json(404, {"code": "NotFound", "description": path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self._fault():
            return
        if urlparse(self.path).path.rstrip("/") == "/search":
            self._json(200, self.owner.search(body))
        else:
            self._json(405, {"code": "MethodNotAllowed"})

    def _file(self, rel: str) -> None:
        o = self.owner
        if o.token and self.headers.get("Authorization") != f"Bearer {o.token}":
            self._send(401, b"token required", "text/plain")
            return
        path = (o.files_root / rel).resolve()
        if not path.is_file() or o.files_root.resolve() not in path.parents:
            self._send(404, b"no such file", "text/plain")
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            lo_s, _, hi_s = rng[len("bytes=") :].split(",")[0].partition("-")
            lo = int(lo_s)
            hi = min(int(hi_s) if hi_s else len(data) - 1, len(data) - 1)
            if lo >= len(data):
                self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                return
            self._send(
                206,
                data[lo : hi + 1],
                "image/tiff",
                {"Content-Range": f"bytes {lo}-{hi}/{len(data)}", "Accept-Ranges": "bytes"},
            )
        else:
            self._send(200, data, "image/tiff", {"Accept-Ranges": "bytes"})
