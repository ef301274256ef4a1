"""Peak memory of exporting the catalogue: `captioner export` (JSONL, CSV, WebDataset shards,
sidecars) and GET /images/export.jsonl.

Fills SQLite catalogues of 10,000 and 100,000 rows straight in one transaction (as
`make bench` does), with a small file per row in the store (the shards copy image bytes),
then runs each export in a child process and reads the child's peak resident set size from
the kernel (wait4). Constant memory means the peak does not grow with the number of rows
while the output does.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/export_memory.py [--rows 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench import fill_catalogue  # noqa: E402

MODEL = "Salesforce/blip-image-captioning-base"
# GET /images/export.jsonl through the real app (model never loaded), body read chunk by
# chunk as a WSGI server would send it; prints the number of bytes.
HTTP_EXPORT = """
import sys
from captioner.config import Settings
from captioner.container import build_container
from captioner.entrypoints.http import create_app
container = build_container(Settings.load({"data_dir": sys.argv[1]}), load_model=False)
client = create_app(container).test_client()
response = client.get("/images/export.jsonl", buffered=False)
assert response.status_code == 200, response.status_code
size = 0
for chunk in response.response:
    size += len(chunk)
print(size)
"""


def peak_rss_mb(command: Sequence[str]) -> tuple[float, int]:
    """Run ``command``; its peak RSS in MB, and how many bytes it wrote to stdout."""
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(command, stdout=out, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise RuntimeError(f"{command[:4]} exited {child.returncode}")
        written = out.tell()
        out.seek(0)
        if written < 32:  # the HTTP child prints the body size instead of the body
            written = int(out.read().decode() or 0)
    return usage.ru_maxrss / 1024, written  # ru_maxrss is in KB on Linux


def output_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def store_files(directory: Path) -> None:
    """A small file at every row's path: the shards copy bytes, none are decoded."""
    payload = b"\xff\xd8\xff\xe0 bench image bytes \xff\xd9"
    with closing(sqlite3.connect(directory / "captioner.sqlite3")) as db:
        for (path,) in db.execute("SELECT path FROM images"):
            target = directory / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)


def catalogue(directory: Path, rows: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "captioner.sqlite3"
    fill_catalogue(database, rows, MODEL)
    generation = json.dumps({"max_new_tokens": 30, "num_beams": 1, "prompt": ""})
    with closing(sqlite3.connect(database)) as db, db:
        db.execute(
            "UPDATE images SET model_revision = ?, generation = ?, duration_ms = 2210.4",
            ("82a37760796d32b1411fe092ab5d4e227313294b", generation),
        )
    store_files(directory)
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args(argv)
    python = sys.executable
    print(f"{'rows':>8} {'export':<30} {'output MB':>10} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory(prefix="captioner-export-") as work:
        for rows in args.rows:
            data_dir = catalogue(Path(work) / str(rows), rows)
            runs = {
                "captioner export (jsonl)": [
                    python, "-m", "captioner.entrypoints.cli", "export", "--data-dir", str(data_dir)
                ],
                "captioner export --format csv": [
                    python, "-m", "captioner.entrypoints.cli", "export", "--format", "csv",
                    "--data-dir", str(data_dir),
                ],
                "GET /images/export.jsonl": [python, "-c", HTTP_EXPORT, str(data_dir)],
            }  # fmt: skip
            folders = {}
            for kind in ("webdataset", "sidecars"):
                folders[f"captioner export --{kind}"] = Path(work) / f"{rows}-{kind}"
                runs[f"captioner export --{kind}"] = [
                    python, "-m", "captioner.entrypoints.cli", "export", f"--{kind}",
                    str(folders[f"captioner export --{kind}"]), "--data-dir", str(data_dir),
                ]  # fmt: skip
            for name, command in runs.items():
                peak, written = peak_rss_mb(command)
                if name in folders:
                    written = output_bytes(folders[name])
                print(f"{rows:>8} {name:<30} {written / 1e6:>10.1f} {peak:>12.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
