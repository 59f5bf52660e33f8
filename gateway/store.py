"""Jobs and their files, kept across gateway restarts: one SQLite table, files under the data directory.

A job row holds what the client asked for (the request, as JSON) and where it stands (status, progress,
times, error). Its files are `<data>/videos/<id>.<variant>`; ids are `video_` + 32 random hex digits, and a
path is only ever built from an id that matches that form, so no request reaches a file outside the data
directory.
"""
from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ID_PATTERN = re.compile(r"^video_[0-9a-f]{32}$")
STATUSES = ("queued", "in_progress", "completed", "failed")
VARIANTS = {"video": ("mp4", "video/mp4"), "thumbnail": ("png", "image/png"), "spritesheet": ("png", "image/png")}


def new_id() -> str:
    return "video_" + secrets.token_hex(16)


@dataclass
class Job:
    id: str
    request: dict[str, Any]  # prompt, negative_prompt, frames, width, height, steps, guidance, seed, cache
    status: str = "queued"
    progress: int = 0
    created_at: int = field(default_factory=lambda: int(time.time()))
    completed_at: int | None = None
    expires_at: int | None = None
    error: dict[str, str] | None = None
    steps_skipped: int | None = None


class JobStore:
    """Thread-safe (one connection, one lock): the runner's threads and the web app share it."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir)
        (self.root / "videos").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, seq INTEGER, request TEXT, status TEXT, "
            "progress INTEGER, created_at INTEGER, completed_at INTEGER, expires_at INTEGER, error TEXT, "
            "steps_skipped INTEGER)")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- rows ------------------------------------------------------------------------------------------------
    @staticmethod
    def _job(row) -> Job:
        return Job(row[0], json.loads(row[2]), row[3], row[4], row[5], row[6], row[7],
                   json.loads(row[8]) if row[8] else None, row[9])

    def add(self, job: Job) -> None:
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (job.id, seq, json.dumps(job.request), job.status, job.progress, job.created_at,
                              job.completed_at, job.expires_at, json.dumps(job.error) if job.error else None,
                              job.steps_skipped))

    def get(self, job_id: str) -> Job | None:
        if not ID_PATTERN.match(job_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    def update(self, job_id: str, **values: Any) -> None:
        cols = {k: json.dumps(v) if k == "error" and v is not None else v for k, v in values.items()}
        sets = ", ".join(f"{k} = ?" for k in cols)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*cols.values(), job_id))

    def delete(self, job_id: str) -> bool:
        with self._lock:
            gone = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0
        self.remove_files(job_id)
        return gone

    def page(self, after: str | None, limit: int, newest_first: bool = True) -> tuple[list[Job], bool]:
        """Jobs after the one with id `after` (OpenAI's cursor), `limit` of them, and whether more follow."""
        order = "DESC" if newest_first else "ASC"
        with self._lock:
            if after:
                seq = self._db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
                if seq is None:
                    return [], False
                op = "<" if newest_first else ">"
                rows = self._db.execute(f"SELECT * FROM jobs WHERE seq {op} ? ORDER BY seq {order} LIMIT ?",
                                        (seq[0], limit + 1)).fetchall()
            else:
                rows = self._db.execute(f"SELECT * FROM jobs ORDER BY seq {order} LIMIT ?", (limit + 1,)).fetchall()
        return [self._job(r) for r in rows[:limit]], len(rows) > limit

    def with_status(self, status: str) -> list[Job]:
        """Jobs in one status, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status = ? ORDER BY seq", (status,)).fetchall()
        return [self._job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | dict(rows)

    def expired(self, now: int) -> Iterator[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?",
                                    (now,)).fetchall()
        return (self._job(r) for r in rows)

    # -- files -----------------------------------------------------------------------------------------------
    def path(self, job_id: str, variant: str) -> Path:
        if not ID_PATTERN.match(job_id) or variant not in VARIANTS:
            raise ValueError(f"no such file: {job_id!r} {variant!r}")
        return self.root / "videos" / f"{job_id}.{variant}.{VARIANTS[variant][0]}"

    def remove_files(self, job_id: str) -> None:
        for variant in VARIANTS:
            try:
                self.path(job_id, variant).unlink(missing_ok=True)
            except ValueError:
                return
