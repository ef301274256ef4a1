"""The Containerfile built and run without a container runtime: a Debian base made by
mmdebstrap, `buildah bud` to build, `buildah run --isolation chroot` to run commands inside."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("buildah", "podman", "mmdebstrap")
INSTALL_HINT = "apt-get install buildah podman mmdebstrap (.ci/run installs them)"
ISOLATION = ["--isolation", "chroot"]  # podman's runtime cannot start containers here

# The base image: Debian's python3 (3.11, which the CPU torch wheel is built for) and its venv
# module, certificates for HTTPS, nothing else. Docs, man pages and translations are left out
# (the copyright files stay). Its hash names the cached tarball and image.
DEBIAN_SUITE = "bookworm"
BASE_RECIPE = (
    "mmdebstrap",
    "--variant=minbase",
    "--format=tar",
    "--include=python3,python3-venv,ca-certificates",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    DEBIAN_SUITE,
)
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "captioner-tests"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def require() -> None:
    """Skip the calling test where buildah, podman or mmdebstrap is missing; under CI=true, fail."""
    import pytest

    missing = missing_tools()
    if missing:
        message = f"{', '.join(missing)} not installed: {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def run(*command: str, timeout_s: float = 600) -> str:
    """Run ``command``; its stdout, or an AssertionError carrying what it printed."""
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}"
        )
    return done.stdout


def image_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", name], capture_output=True
        ).returncode
        == 0
    )


@dataclass(frozen=True)
class DebianBase:
    name: str
    made_s: float  # 0 when the cached image was reused


def debian_base() -> DebianBase:
    """The base image for BASE_RECIPE: reused from container storage when there, else made by
    mmdebstrap (its tarball cached by the recipe's hash) and imported. A failed attempt leaves
    neither a partial tarball nor an image behind."""
    digest = hashlib.sha256("\0".join(BASE_RECIPE).encode()).hexdigest()[:16]
    name = f"localhost/captioner-test-base:{digest}"
    if image_exists(name):
        return DebianBase(name, 0.0)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tarball = CACHE_DIR / f"debian-base-{digest}.tar"
    partial = tarball.with_name(f"{tarball.stem}.partial-{uuid.uuid4().hex}.tar")
    started = time.monotonic()
    try:
        if not tarball.exists():
            run(*BASE_RECIPE, str(partial), timeout_s=900)
            partial.rename(tarball)
        run("podman", "import", str(tarball), name)
    except BaseException:
        for path in (partial, tarball):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        subprocess.run(["buildah", "rmi", name], capture_output=True)
        raise
    return DebianBase(name, time.monotonic() - started)


def local_pip_settings() -> dict[str, str]:
    """This machine's pip settings that say where packages come from (`pip config list`,
    PIP_* variables first), to hand to the build as build arguments."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    settings: dict[str, str] = {}
    for line in sorted(listed.splitlines(), key=lambda entry: entry.startswith(":env:")):
        key, _, value = line.partition("=")
        settings[key.rsplit(".", 1)[-1]] = value.strip("'\"")
    wanted = ("index-url", "extra-index-url", "find-links", "cert")
    return {
        f"PIP_{key.upper().replace('-', '_')}": settings[key] for key in wanted if key in settings
    }


def local_paths(settings: Mapping[str, str]) -> list[str]:
    """The files and folders on this machine that ``settings`` name (file:// indexes, local
    find-links, the CA bundle): the build sees them at the same paths, read-only. A file://
    index comes with its parent folder, where its pages' relative links to the files lead."""
    paths = []
    for value in settings.values():
        for part in value.split():
            path = Path(part.removeprefix("file://"))
            if part.startswith("file://"):
                path = path.parent
            if path.is_absolute() and path.exists():
                paths.append(str(path))
    return paths


@dataclass(frozen=True)
class BuiltImage:
    name: str
    build_s: float
    size_bytes: int

    def config(self) -> dict[str, object]:
        """The image's Docker-format config (Cmd, User, Volumes, Healthcheck, Env...)."""
        inspected = json.loads(run("buildah", "inspect", "--type", "image", self.name))
        config: dict[str, object] = inspected["Docker"]["config"]
        return config

    def run_once(self, *command: str) -> str:
        """stdout of ``command`` in a fresh working container of the image, removed after."""
        container = run("buildah", "from", "--pull=never", self.name).strip()
        try:
            return run("buildah", "run", *ISOLATION, container, "--", *command)
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True)

    def history(self) -> str:
        return run("buildah", "inspect", "--type", "image", "--format", "{{.History}}", self.name)

    def remove(self) -> None:
        subprocess.run(["buildah", "rmi", self.name], capture_output=True)


def build_image(base: str, name: str) -> BuiltImage:
    """`buildah bud` of the Containerfile on ``base``; this machine's package indexes go in as
    build arguments and read-only mounts, which reach only the build's RUN steps."""
    settings = local_pip_settings()
    arguments = [f"--build-arg={key}={value}" for key, value in settings.items()]
    mounts = [f"--volume={path}:{path}:ro" for path in local_paths(settings)]
    started = time.monotonic()
    run(
        "buildah",
        "bud",
        *ISOLATION,
        "--format=docker",  # OCI images have no HEALTHCHECK
        f"--build-arg=BASE_IMAGE={base}",
        "--build-arg=TORCH_INDEX_URL=",  # torch from the local wheels: their CPU build
        *arguments,
        *mounts,
        f"--tag={name}",
        "--file=Containerfile",
        str(ROOT),
        timeout_s=1800,
    )
    build_s = time.monotonic() - started
    size = run("podman", "image", "inspect", "--format", "{{.Size}}", name)
    return BuiltImage(name, build_s, int(size))


class ImageProcess:
    """One command running inside its own working container of an image (`buildah from`,
    `buildah run`), like a compose service: its environment and mounts are given."""

    def __init__(
        self,
        image: str,
        command: Sequence[str],
        env: Mapping[str, str],
        mounts: Sequence[str],
        log: Path,
    ) -> None:
        self.container = run("buildah", "from", "--pull=never", image).strip()
        self.log = log
        self._command = [
            "buildah",
            "run",
            *ISOLATION,
            *[f"--env={key}={value}" for key, value in env.items()],
            *[f"--volume={mount}" for mount in mounts],
            self.container,
            "--",
            *command,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                self._command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exec(self, *command: str, env: Mapping[str, str] | None = None) -> int:
        """Exit status of ``command`` run beside the main one, in the same container."""
        flags = [f"--env={key}={value}" for key, value in (env or {}).items()]
        return subprocess.run(
            ["buildah", "run", *ISOLATION, *flags, self.container, "--", *command],
            capture_output=True,
            timeout=120,
        ).returncode

    def stop(self) -> None:
        """SIGTERM (buildah passes it on), SIGKILL after 30 s; then the container goes."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        subprocess.run(["buildah", "rm", self.container], capture_output=True)
