"""`make soak`: hours of use in minutes. Mixed load on a real `captioner serve`, sampled.

For each catalogue and store (SQLite and the data dir; PostgreSQL and an S3 bucket on moto),
a real `captioner serve` with a tiny BLIP model takes ``--minutes`` (default 20) of mixed
requests from ``--clients`` threads: distinct and duplicate uploads, lists, searches,
thumbnails and deletes, with one `captioner recaption` run (another process, another model)
half way through. Every ``--sample-s`` (default 60) the server's processes are sampled: RSS,
open files and threads, summed over the server and its children. At the end every upload
answered 200 and not deleted since must be listed, and its file must read back with its
SHA-256. Prints the samples, the recaption's outcome and the verdict; exits 1 when something
was lost.

    make soak                                   # 20 minutes a backend
    make soak SOAK_ARGS="--minutes 3 --backends sqlite"
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the tiny model, PostgreSQL, moto, replicas

from tests.support.models import WORDS  # noqa: E402
from tests.support.replicas import CAPTIONER, ReplicaProcess  # noqa: E402

# How often each request is made, out of the sum: uploads outnumber deletes, so the library
# grows through the run, as a used one does.
MIX = {
    "upload": 25,
    "duplicate": 15,
    "list": 20,
    "search": 15,
    "thumbnail": 15,
    "delete": 10,
}


@dataclass
class Library:
    """What the clients were answered: uploads kept (id -> SHA-256), counts, failures."""

    kept: dict[int, str] = field(default_factory=dict)
    bytes_of: dict[int, bytes] = field(default_factory=dict)
    done: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_image: int = 0

    def pick(self, rng: random.Random) -> int | None:
        with self.lock:
            return rng.choice(list(self.kept)) if self.kept else None


def photo(number: int) -> bytes:
    """A small JPEG no other number gives."""
    rng = random.Random(number)
    image = Image.new("RGB", (96, 72), (number % 256, number // 256 % 256, rng.randrange(256)))
    image.putpixel((rng.randrange(96), rng.randrange(72)), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def one_request(url: str, library: Library, rng: random.Random) -> None:
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    target = library.pick(rng)
    if kind in ("duplicate", "thumbnail", "delete") and target is None:
        kind = "upload"
    if kind == "upload":
        with library.lock:
            number, library.next_image = library.next_image, library.next_image + 1
        data = photo(number)
        answer = requests.post(f"{url}/upload", files={"image": ("p.jpg", data)}, timeout=120)
        if answer.status_code == 200:
            with library.lock:
                library.kept[answer.json()["id"]] = answer.json()["sha256"]
                library.bytes_of[answer.json()["id"]] = data
    elif kind == "duplicate":
        with library.lock:
            data = library.bytes_of.get(target or 0, b"")
        answer = requests.post(f"{url}/upload", files={"image": ("p.jpg", data)}, timeout=120)
    elif kind == "list":
        answer = requests.get(f"{url}/images", params={"limit": 50}, timeout=60)
    elif kind == "search":
        answer = requests.get(f"{url}/images", params={"q": rng.choice(WORDS)}, timeout=60)
    elif kind == "thumbnail":
        answer = requests.get(f"{url}/images/{target}/thumbnail", timeout=60)
    else:
        with library.lock:  # gone from the books first: the delete may land any moment now
            library.kept.pop(target or 0, None)
        answer = requests.delete(f"{url}/images/{target}", timeout=60)
    library.done[kind] += 1
    # A thumbnail or duplicate of an image another client just deleted is a fair 404.
    if answer.status_code != 200 and not (answer.status_code == 404 and kind != "upload"):
        library.failures.append(f"{kind} -> {answer.status_code} {answer.text[:200]}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def sample(pid: int) -> dict[str, float]:
    """RSS (MiB), open files and threads, summed over the server's processes."""
    rss_kb = threads = files = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
            files += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss_kb += int(line.split()[1])
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
    return {"rss_mib": rss_kb / 1024, "open_files": files, "threads": threads}


def recaption(env: dict[str, str], model_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """One `captioner recaption` with another model, in its own process, beside the server."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [CAPTIONER, "recaption", "--model", str(model_dir), "--limit", "200"],
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def lost_uploads(url: str, library: Library) -> list[str]:
    """Uploads answered 200, not deleted since, that are not listed or whose file is wrong."""
    listed: set[int] = set()
    page: str | None = f"{url}/images?limit=1000"
    while page is not None:
        answer = requests.get(page, timeout=120)
        listed.update(item["id"] for item in answer.json())
        link = answer.links.get("next", {}).get("url")
        page = f"{url}{link}" if link and link.startswith("/") else link
    lost = [f"{record_id} not listed" for record_id in library.kept if record_id not in listed]
    for record_id, sha256 in library.kept.items():
        content = requests.get(f"{url}/images/{record_id}/file", timeout=120).content
        if hashlib.sha256(content).hexdigest() != sha256:
            lost.append(f"{record_id}: its file does not read back")
    return lost


@contextmanager
def backend(name: str, work: Path) -> Iterator[dict[str, str]]:
    """The settings of a catalogue and store: the data dir alone, or PostgreSQL + S3 (moto)."""
    env = {"CAPTIONER_DATA_DIR": str(work / "data")}
    if name == "sqlite":
        yield env
        return
    from tests.support.postgres import PostgresServer
    from tests.support.s3 import REGION, S3Endpoint

    from captioner.adapters.storage.s3 import make_s3_client

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log
    database, endpoint = PostgresServer(), S3Endpoint()
    database.start()
    endpoint.start()
    aws = {
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_ACCESS_KEY_ID": "soak",
        "AWS_SECRET_ACCESS_KEY": "soak",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }
    os.environ.update(aws)  # for this process's client, and the children's
    try:
        make_s3_client().create_bucket(Bucket="soak")
        yield {
            **env,
            "CAPTIONER_DATABASE_URL": database.url(database.create_database()),
            "CAPTIONER_STORE_URL": "s3://soak/captioner",
        }
    finally:
        endpoint.stop()
        database.remove()


def soak(name: str, args: argparse.Namespace, models: Path, work: Path) -> bool:
    """One backend's run; prints its samples; True when nothing was lost."""
    work.mkdir(parents=True)
    with backend(name, work) as env:
        env |= {
            "CAPTIONER_MODEL": str(models / "served"),
            "CAPTIONER_COMPILE": "off",
            "CAPTIONER_CHECK_ON_START": "false",
            "CAPTIONER_TORCH_THREADS": "1",
        }
        server = ReplicaProcess.serve(env, work / f"{name}-server.log")
        server.start()
        server.wait_until_ready()
        assert server.process is not None
        library, stop = Library(), threading.Event()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                try:
                    one_request(server.url, library, rng)
                except requests.RequestException as error:
                    library.failures.append(f"no answer: {error}")

        clients = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        began = time.monotonic()
        samples = [(0.0, sample(server.process.pid))]
        for thread in clients:
            thread.start()
        recaptioning: subprocess.Popen[bytes] | None = None
        try:
            while (elapsed := time.monotonic() - began) < args.minutes * 60:
                time.sleep(min(args.sample_s, args.minutes * 60 - elapsed))
                samples.append((time.monotonic() - began, sample(server.process.pid)))
                if recaptioning is None and time.monotonic() - began >= args.minutes * 30:
                    recaptioning = recaption(env, models / "other", work / f"{name}-rc.log")
        finally:
            stop.set()
            for thread in clients:
                thread.join()
        recaptioned = recaptioning.wait(timeout=600) if recaptioning is not None else None
        lost = lost_uploads(server.url, library)
        server.stop()
    print(f"\n{name}: {args.minutes:g} min, {args.clients} clients, {dict(library.done)}")
    print(f"  {'minute':>6} {'RSS MiB':>8} {'open files':>10} {'threads':>7}")
    for at, measured in samples:
        print(
            f"  {at / 60:6.1f} {measured['rss_mib']:8.1f} {measured['open_files']:10.0f}"
            f" {measured['threads']:7.0f}"
        )
    print(f"  recaption exit code: {recaptioned}; failed requests: {len(library.failures)}")
    if recaptioned != 0:
        tail = (work / f"{name}-rc.log").read_text(errors="replace").splitlines()[-8:]
        print("\n".join(f"    recaption: {line}" for line in tail))
    for failure in library.failures[:10]:
        print(f"    {failure}")
    print(f"  kept uploads checked: {len(library.kept)}; lost: {len(lost)}")
    for problem in lost[:10]:
        print(f"    {problem}")
    # The recaption's exit is reported, not judged: images the clients delete under it fail
    # it, as they would any recaption of a library in use.
    return not lost


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=20.0, help="per backend (default 20)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--sample-s", type=float, default=60.0, help="sampling (default 60)")
    parser.add_argument("--backends", default="sqlite,postgres+s3", help="comma-separated")
    args = parser.parse_args(argv)
    from tests.support.models import build_blip

    with tempfile.TemporaryDirectory(prefix="captioner-soak-") as folder:
        work = Path(folder)
        models = work / "models"
        build_blip(models / "served")
        build_blip(models / "other")
        results = [
            soak(name, args, models, work / name.replace("+", "-"))
            for name in args.backends.split(",")
        ]
    print("\nnothing lost" if all(results) else "\nLOST or FAILED: see above")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
