"""The export streams: memory stays flat however many records the catalogue holds."""

from __future__ import annotations

import hashlib
import sqlite3
import tracemalloc
from contextlib import closing
from pathlib import Path

import pytest

from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository
from captioner.config import Settings
from captioner.container import build_container
from captioner.entrypoints.http import create_app

pytestmark = pytest.mark.slow

ROWS = 10_000


def fill(database: Path, rows: int) -> None:
    """Rows written straight to SQLite in one transaction (the repository commits each)."""
    SqliteCaptionRepository(database).close()
    with closing(sqlite3.connect(database)) as db, db:
        db.executemany(
            """INSERT INTO images (sha256, path, description, model, prompt, created_at,
                                   width, height, content_type, original_name, model_revision,
                                   generation, duration_ms)
               VALUES (?, ?, ?, 'm', '', '2026-01-01T00:00:00+00:00', 640, 480, 'image/jpeg',
                       NULL, 'rev', '{"max_new_tokens": 30, "num_beams": 1}', 12.5)""",
            (
                (sha, f"uploads/{sha}.jpg", f"caption number {number} of a cat on a mat")
                for number in range(rows)
                for sha in [hashlib.sha256(str(number).encode()).hexdigest()]
            ),
        )


def peak_of_export(data_dir: Path, rows: int) -> tuple[int, int]:
    """Peak traced memory while GET /images/export.jsonl streams ``rows`` records, and the
    body's size (after a first request, so lazy imports and caches are not counted)."""
    data_dir.mkdir()
    fill(data_dir / "captioner.sqlite3", rows)
    container = build_container(Settings(data_dir=data_dir), load_model=False)
    client = create_app(container).test_client()
    client.get("/images/export.jsonl").close()
    tracemalloc.start()
    try:
        response = client.get("/images/export.jsonl", buffered=False)
        size = lines = 0
        for chunk in response.response:
            data = chunk if isinstance(chunk, bytes) else chunk.encode()
            size += len(data)
            lines += data.count(b"\n")
        response.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == rows
    return peak, size


def test_http_export_streams_in_the_same_memory_for_five_times_the_records(
    tmp_path: Path,
) -> None:
    small_peak, small_size = peak_of_export(tmp_path / "small", ROWS // 5)
    large_peak, large_size = peak_of_export(tmp_path / "large", ROWS)

    assert large_size > 4 * small_size
    assert large_peak < 1.5 * small_peak, (small_peak, large_peak)  # a page at a time
    assert large_peak < large_size / 2
