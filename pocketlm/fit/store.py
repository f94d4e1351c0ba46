"""Every finished measurement, one SQLite row committed as it completes, so a killed fit resumes.

Rows are keyed by what determines them (the model's fingerprint, the measurement setting or the quality
protocol, the candidate), never by the budget: a second budget on the same folder reuses every row.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS records (kind TEXT, key TEXT, value TEXT, created REAL, "
                        "PRIMARY KEY (kind, key))")
        self.db.commit()
        self.hits = self.writes = 0

    def get(self, kind: str, key: str) -> dict | None:
        row = self.db.execute("SELECT value FROM records WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        if row is not None:
            self.hits += 1
        return None if row is None else json.loads(row[0])

    def put(self, kind: str, key: str, value: dict) -> dict:
        self.db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                        (kind, key, json.dumps(value, default=str), time.time()))
        self.db.commit()
        self.writes += 1
        return value

    def count(self, kind: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,)).fetchone()[0]

    def all(self, kind: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM records WHERE kind = ?",
                                                             (kind,))}

    def close(self) -> None:
        self.db.close()
