"""Log lines for people (text) or for log pipelines (one JSON object per line)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

# Fields the pipeline passes as ``extra`` (acquisition, tile, stage, duration, counts).
EVENT_FIELDS = (
    "acquisition_id", "tile", "stage", "seconds", "anomaly_rows", "failure_class", "poll",
)  # fmt: skip


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", <event fields>, "error"}``, one per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def text_formatter() -> logging.Formatter:
    return logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
