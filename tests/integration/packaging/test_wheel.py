"""The wheel and sdist `python -m build` makes: everything the service needs is inside them,
and the wheel installed alone into a fresh venv answers `--version` and serves."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

from tests.support import deployed
from tests.support.live_server import free_port

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "src" / "captioner"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def package_files() -> set[str]:
    """Every file of the package in the source tree (what an installed service may open)."""
    return {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`python -m build`: the sdist, then the wheel built from that sdist (as pip would)."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend comes from this venv, so the build needs no index.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    return Built(wheel=next(out.glob("*.whl")), sdist=next(out.glob("*.tar.gz")))


def test_the_wheel_and_sdist_carry_every_file_of_the_package(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        in_wheel = {name for name in wheel.namelist() if name.startswith("captioner/")}
    with tarfile.open(built.sdist) as sdist:
        prefix = sdist.getnames()[0].split("/")[0] + "/src/"
        in_sdist = {
            name.removeprefix(prefix) for name in sdist.getnames() if name.startswith(prefix)
        }

    needed = package_files()
    assert needed - in_wheel == set()
    assert needed - in_sdist == set()
    assert any(name.endswith(".sql") for name in needed)
    assert "captioner/entrypoints/http/templates/gallery.html" in in_wheel


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; its dependencies are this venv's, seen through a
    path file (so nothing is downloaded), while captioner itself can only come from the wheel."""
    target = tmp_path_factory.mktemp("venv")
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(built.wheel),
        ],
        check=True,
        capture_output=True,
        timeout=240,
        env=clean_env(),
    )
    # Only now (pip would take this venv's editable captioner for installed) a plain path
    # line: this venv's own .pth files, the editable install's among them, stay unread, so
    # the source tree is not on the fresh venv's path.
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return target


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **extra}


def test_the_installed_wheel_names_the_project_version_and_imports_from_itself(
    installed: Path, tmp_path: Path
) -> None:
    version = subprocess.run(
        [str(installed / "bin" / "captioner"), "--version"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import captioner; print(captioner.__file__)"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )

    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"captioner {project_version()}"
    assert Path(where.stdout.strip()).is_relative_to(installed)


@pytest.fixture
def wheel_server(
    installed: Path, tiny_blip_dir: Path, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """`captioner serve --host 0.0.0.0` from the fresh venv, its admin key from a secret file."""
    port = free_port()
    secret = "wheel-test-admin-key-" + "0123456789abcdef" * 2
    key_file = tmp_path / "admin_key"
    key_file.write_text(secret + "\n")
    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [
                str(installed / "bin" / "captioner"),
                "serve",
                "--host",
                "0.0.0.0",
                "--port",
                str(port),
                "--model",
                str(tiny_blip_dir),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=clean_env(CAPTIONER_ADMIN_KEY_FILE=str(key_file), CAPTIONER_COMPILE="off"),
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deployed.wait_until_ready(base, lambda: server.poll() is None)
        yield base, {"Authorization": f"Bearer {secret}"}
    finally:
        server.terminate()
        server.wait(timeout=30)
        text = log.read_text(errors="replace")
        assert secret not in text, "the admin key reached the server's log"


def test_the_installed_wheel_serves_gallery_docs_and_captions_on_its_first_start(
    wheel_server: tuple[str, dict[str, str]],
) -> None:
    import httpx

    base, headers = wheel_server

    assert httpx.post(f"{base}/upload", files={"image": ("a.png", b"x")}).status_code == 401
    deployed.serves_captions_and_repeats(base, headers)
