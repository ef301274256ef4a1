"""For bulk tests: a captioner that counts its runs in a file (so runs in Ray's worker
processes add up), can die once mid-run like a lost actor, and the container factory that
injects it, importable by those workers."""

from __future__ import annotations

import fcntl
import io
import os
from pathlib import Path

from dependency_injector import providers
from PIL import Image

from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.domain.model import Caption, DecodedImage
from tests.support.captioners import ReadyCaptioner

# Where the runs are counted (one line each), and after how many runs a worker dies once.
RUNS_FILE = "CAPTIONER_TEST_RUNS_FILE"
# A file beside RUNS_FILE (suffix .die-after) holding N: after N runs, a worker dies once.


class CountingCaptioner(ReadyCaptioner):
    """Describes an image by its size and counts the run; with a .die-after file, the process
    running the model exits (no cleanup, as a killed actor) at that run, before it finishes
    (so the run it was in the middle of is not counted: it never produced a caption)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        runs = Path(os.environ[RUNS_FILE])
        with open(runs.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            die_after_file = runs.with_suffix(".die-after")
            die_after = die_after_file.read_text() if die_after_file.exists() else ""
            died = runs.with_suffix(".died")
            done = len(runs.read_text().splitlines()) if runs.exists() else 0
            if die_after and done >= int(die_after) and not died.exists():
                died.write_text(str(os.getpid()))
                os._exit(1)
            with runs.open("a") as counted:
                counted.write(f"{os.getpid()}\n")
        return Caption(f"an image of {image.width}x{image.height}", duration_ms=1.0)


def counted_runs(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def counting_containers(settings: Settings, load_model: bool) -> Container:
    """build_container with the counting captioner in place of the model."""
    container = build_container(settings, load_model)
    container.captioner.override(
        providers.Singleton(CountingCaptioner, container.settings.provided.model)
    )
    return container


def distinct_png(number: int) -> bytes:
    """A small PNG whose bytes no other number gives."""
    image = Image.new("RGB", (8 + number % 5, 8), (number % 256, number // 256 % 256, 7))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


RAY_HINT = "Ray is not installed: pip install -c constraints.txt -e '.[ray]'; .ci/run installs it"


def require_ray() -> None:
    """Skip the calling test where Ray is not installed; under CI=true, fail it."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(RAY_HINT)
        pytest.skip(RAY_HINT)


def image_tree(root: Path, numbers: range) -> list[Path]:
    """Distinct PNGs in nested folders under ``root``, one per number."""
    paths = []
    for number in numbers:
        path = root / f"set{number % 4}" / f"part{number % 3}" / f"{number}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(distinct_png(number))
        paths.append(path)
    return paths
