"""`streamembed serve`: a web map of the anomalies over an output folder or bucket (Starlette).

Everything the page needs is served from here, Leaflet included (vendored in static/): the map
works on a machine with no internet. A basemap is optional (``--basemap`` URL template).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...layout import OutputLayout
from ...products.anomaly_map import LABEL_COLOURS
from .auth import RequireAuth, ServeAuth, warn_if_exposed
from .view import OutputView

STATIC = Path(__file__).parent / "static"


def create_app(
    layout: OutputLayout,
    basemap: str | None = None,
    refresh_seconds: float = 10.0,
    auth: ServeAuth | None = None,
    max_download_rows: int = 200_000,
) -> Starlette:
    """The web app over the outputs in ``layout``; ``basemap``: an XYZ tile URL template;
    ``auth``: the credentials every request but ``/healthz`` needs (None or none set: open);
    ``max_download_rows``: the largest view a download returns (413 beyond it)."""
    view = OutputView(layout)
    page_config = {
        "basemap": basemap,
        "refreshSeconds": refresh_seconds,
        "labelColours": LABEL_COLOURS,
        # The output's name only: where it lives on the server is not the page's business.
        "output": layout.root.rstrip("/").rsplit("/", 1)[-1],
    }

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def config(_: Request) -> Response:
        return JSONResponse(page_config)

    async def summary(_: Request) -> Response:
        return JSONResponse(await run_in_threadpool(view.summary))

    def _rows(request: Request) -> Any:
        q = request.query_params
        return view.select(q.get("date") or None, q.get("tile") or None, q.get("until") == "1",
                           _bbox(q.get("bbox")))  # fmt: skip

    async def anomalies(request: Request) -> Response:
        try:
            rows = await run_in_threadpool(_rows, request)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, 400)
        return JSONResponse(await run_in_threadpool(view.geojson, rows))

    async def download(request: Request) -> Response:
        try:
            rows = await run_in_threadpool(_rows, request)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, 400)
        if len(rows) > max_download_rows:
            return JSONResponse({"error": f"{len(rows)} rows, over this server's limit of "
                                 f"{max_download_rows} (serve.max_download_rows): narrow the view "
                                 "by date, tile or bbox, or read the GeoParquet files"}, 413)  # fmt: skip
        fmt = request.query_params.get("format", "geojson")
        q = request.query_params
        stem = "anomalies" + "".join(f"_{q[k]}" for k in ("tile", "date") if q.get(k))
        if fmt == "parquet":
            body = await run_in_threadpool(view.geoparquet, rows)
            media, name = "application/vnd.apache.parquet", f"{stem}.parquet"
        elif fmt == "geojson":
            body = json.dumps(await run_in_threadpool(view.geojson, rows)).encode()
            media, name = "application/geo+json", f"{stem}.geojson"
        else:
            return JSONResponse({"error": f"format {fmt}: use geojson or parquet"}, 400)
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(body, media_type=media, headers=headers)

    async def history(request: Request) -> Response:
        q = request.query_params
        try:
            tile, y, x = q["tile"], int(q["y"]), int(q["x"])
        except (KeyError, ValueError):
            return JSONResponse({"error": "give tile, y and x (cell row and column)"}, 400)
        try:
            return JSONResponse(await run_in_threadpool(view.history, tile, y, x))
        except KeyError as err:
            return JSONResponse({"error": str(err.args[0])}, 404)

    async def quicklook(request: Request) -> Response:
        tile = request.path_params["tile"]
        date = request.query_params.get("date") or None
        try:
            ql = await run_in_threadpool(view.quicklook, tile, date)
        except (KeyError, ValueError, OSError) as err:
            return JSONResponse({"error": str(err.args[0] if err.args else err)}, 404)
        if request.path_params["ext"] == "json":
            return JSONResponse(
                {"bounds": ql.bounds, "acquisition_id": ql.acquisition_id, "date": ql.date}
            )
        return Response(ql.png, media_type="image/png")

    async def health(_: Request) -> Response:
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return JSONResponse({"ok": True, "time": now})

    guard = [Middleware(RequireAuth, auth=auth)] if auth is not None and auth.enabled else []
    return Starlette(
        middleware=guard,
        routes=[
            Route("/", index),
            Route("/api/config", config),
            Route("/api/summary", summary),
            Route("/api/anomalies", anomalies),
            Route("/api/download", download),
            Route("/api/history", history),
            Route("/api/quicklook/{tile}.{ext:str}", quicklook),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
    )


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    """``bbox=west,south,east,north`` in degrees, as STAC APIs take it."""
    if not text:
        return None
    try:
        west, south, east, north = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"bbox={text}: give west,south,east,north in degrees") from None
    return west, south, east, north


def serve(
    layout: OutputLayout,
    host: str,
    port: int,
    basemap: str | None = None,
    refresh_seconds: float = 10.0,
    max_download_rows: int = 200_000,
) -> None:
    """Run the app with uvicorn until interrupted; credentials from the environment (auth.py),
    a warning where it binds beyond loopback without them."""
    import uvicorn

    auth = ServeAuth.from_env()
    warn_if_exposed(host, auth, "streamembed serve")
    app = create_app(layout, basemap, refresh_seconds, auth, max_download_rows)
    uvicorn.run(app, host=host, port=port, log_level="warning")
