"""Credentials for remote reads, from the environment only (never config.yaml, never logged).

Each worker reads them from its own environment when it opens a raster, so they never travel
inside a task, a config object or a ledger row. On a cluster the environment comes from the
batch job or the Kubernetes secret (docs/deploy.md).

Variables:
- ``CDSE_S3_ACCESS_KEY`` / ``CDSE_S3_SECRET_KEY``: CDSE S3 keys for ``s3://eodata/...`` hrefs
  (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` are used where the CDSE pair is unset).
- ``CDSE_S3_ENDPOINT``: S3 endpoint, default ``eodata.dataspace.copernicus.eu``.
- ``CDSE_ACCESS_TOKEN``: a bearer token sent with HTTPS reads and STAC requests, only to hosts
  under ``dataspace.copernicus.eu`` and those listed in ``STREAMEMBED_TOKEN_HOSTS``
  (comma-separated), so a token is never handed to a third-party host.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

CDSE_S3_ENDPOINT = "eodata.dataspace.copernicus.eu"
CDSE_DOMAIN = "dataspace.copernicus.eu"


class Secret:
    """A string that does not show itself in repr, str, f-strings or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not pickled: workers read credentials from their environment")


@dataclass(frozen=True)
class Credentials:
    """What the environment provides; repr shows which are set, never their values."""

    s3_access_key: Secret | None = None
    s3_secret_key: Secret | None = None
    s3_endpoint: str = CDSE_S3_ENDPOINT
    token: Secret | None = None
    token_hosts: tuple[str, ...] = field(default=(CDSE_DOMAIN,))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if environ is None else environ

        def secret(*names: str) -> Secret | None:
            value = next((env[n] for n in names if env.get(n)), None)
            return Secret(value) if value else None

        extra = tuple(h.strip() for h in env.get("STREAMEMBED_TOKEN_HOSTS", "").split(",") if h)
        return cls(
            s3_access_key=secret("CDSE_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
            s3_secret_key=secret("CDSE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
            s3_endpoint=env.get("CDSE_S3_ENDPOINT", CDSE_S3_ENDPOINT),
            token=secret("CDSE_ACCESS_TOKEN"),
            token_hosts=(CDSE_DOMAIN, *extra),
        )

    def token_for(self, url: str) -> Secret | None:
        """The bearer token if ``url``'s host may receive it, else None."""
        if not self.token:
            return None
        host = urlparse(url).hostname or ""
        ok = any(host == h or host.endswith("." + h) for h in self.token_hosts)
        return self.token if ok else None

    def gdal_options(self, hrefs: Iterable[str]) -> dict[str, object]:
        """GDAL config options carrying the credentials that ``hrefs`` need (values revealed)."""
        hrefs = list(hrefs)
        opts: dict[str, object] = {}
        if any(h.startswith(("s3://", "/vsis3/")) for h in hrefs):
            opts.update(
                AWS_S3_ENDPOINT=self.s3_endpoint,
                AWS_VIRTUAL_HOSTING="FALSE",
                AWS_HTTPS="YES",
            )
            if self.s3_access_key and self.s3_secret_key:
                opts["AWS_ACCESS_KEY_ID"] = self.s3_access_key.reveal()
                opts["AWS_SECRET_ACCESS_KEY"] = self.s3_secret_key.reveal()
            else:
                opts["AWS_NO_SIGN_REQUEST"] = "YES"
        http = [h for h in hrefs if h.startswith(("http://", "https://"))]
        tokens = {self.token_for(h) is not None for h in http}
        # One GDAL environment serves all bands of a scene: send the token only when every
        # remote href may receive it.
        if http and tokens == {True} and self.token:
            opts["GDAL_HTTP_HEADERS"] = f"Authorization: Bearer {self.token.reveal()}"
        return opts

    def http_headers(self, url: str) -> dict[str, str]:
        token = self.token_for(url)
        return {"Authorization": f"Bearer {token.reveal()}"} if token else {}


class RedactSecrets(logging.Filter):
    """Replaces credential values in log records (libraries log request headers at DEBUG)."""

    def __init__(self, secrets: Iterable[Secret | None]):
        super().__init__()
        self._values = [s.reveal() for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._values:
            text = record.getMessage()
            if any(v in text for v in self._values):
                for v in self._values:
                    text = text.replace(v, "***")
                record.msg, record.args = text, None
        return True


def redact_logs(credentials: Credentials | None = None) -> None:
    """Install the redaction filter on every root handler (call after logging is set up)."""
    creds = credentials or Credentials.from_env()
    flt = RedactSecrets([creds.s3_access_key, creds.s3_secret_key, creds.token])
    for handler in logging.getLogger().handlers:
        handler.addFilter(flt)
