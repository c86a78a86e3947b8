"""The webhook outbox: what each webhook (by its URL's key) has been told, in the ledger's own
file (tables ``webhooks`` and ``announcements``), so what is due is computed from what was
applied and nothing is announced twice or lost across restarts."""

from __future__ import annotations

from .ledger import ROW_SELECT, Ledger, LedgerRow, utc_now


class Outbox:
    """The announcements of the webhook ``url_key`` over ``ledger``'s connection."""

    def __init__(self, ledger: Ledger, url_key: str) -> None:
        self._db = ledger.connection
        self.url_key = url_key

    def start(self) -> None:
        """First start of a webhook: files applied before it are not news (marked "before")."""
        self._db.executescript("BEGIN")
        try:
            new = self._db.execute(
                "INSERT OR IGNORE INTO webhooks VALUES (?, ?)", (self.url_key, utc_now())
            ).rowcount
            if new:
                self._db.execute(
                    "INSERT OR IGNORE INTO announcements SELECT id, ?, 'before', 0, ?"
                    " FROM acquisitions WHERE state='applied' AND n_anomalies > 0",
                    (self.url_key, utc_now()),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def unannounced(self) -> list[LedgerRow]:
        """Applied acquisitions with an anomaly file that this webhook has not been told of."""
        sql = (
            ROW_SELECT + " WHERE state='applied' AND n_anomalies > 0 AND id NOT IN"
            " (SELECT acquisition_id FROM announcements WHERE url_key=?) ORDER BY updated, id"
        )
        return [LedgerRow(*r) for r in self._db.execute(sql, (self.url_key,))]

    def revised_at(self, acq_id: str) -> str:
        """When the acquisition's anomaly rows were last revised ('' if never)."""
        row = self._db.execute(
            "SELECT MAX(updated) FROM revisions WHERE acquisition_id=?", (acq_id,)
        ).fetchone()
        return str(row[0] or "")

    def revisions_due(self) -> list[LedgerRow]:
        """Acquisitions announced to this webhook whose anomaly rows were revised since."""
        sql = (
            ROW_SELECT + " WHERE id IN (SELECT acquisition_id FROM announcements WHERE url_key=?"
            " AND status='revise') ORDER BY updated, id"
        )
        return [LedgerRow(*r) for r in self._db.execute(sql, (self.url_key,))]

    def record(self, acq_id: str, status: str, attempts: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO announcements VALUES (?, ?, ?, ?, ?)",
            (acq_id, self.url_key, status, attempts, utc_now()),
        )

    def announcements(self) -> dict[str, str]:
        """{acquisition id: sent | given_up | before} for this webhook."""
        rows = self._db.execute(
            "SELECT acquisition_id, status FROM announcements WHERE url_key=?", (self.url_key,)
        )
        return dict(rows.fetchall())
