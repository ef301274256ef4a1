"""Browser fixtures: Debian's Chromium driven by Playwright, servers on 127.0.0.1, screenshots.

Chromium comes from the system (``apt-get install -y chromium``), not from Playwright's own
download, which cannot be fetched here. Without it the browser tests are skipped with a note
saying how to enable them, except on CI (``CI=true``), where they fail: CI must run them.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from PIL import Image

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ENABLE_HINT = (
    "browser tests need Chromium at {path}: install it with `apt-get install -y chromium` "
    "(as root), or point CHROMIUM_PATH at a Chromium binary"
)
SERVER_START_TIMEOUT_S = 180


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _on_ci():
        pytest.fail(f"{reason} (CI=true: browser tests are mandatory here)", pytrace=False)
    pytest.skip(reason)


def artifacts_dir(config: pytest.Config) -> Path:
    configured = os.environ.get("TEST_ARTIFACTS_DIR")
    return Path(configured) if configured else config.rootpath / "test-artifacts"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Keep each phase's report on the test, so fixtures can tell in teardown that it failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("browser tests need Playwright for Python: run `make install`")
    if not CHROMIUM.exists():
        _unavailable(ENABLE_HINT.format(path=CHROMIUM))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class PageWatch:
    """What the page said that a person would never want to see: errors and alert boxes."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_quiet(self) -> None:
        assert self.dialogs == [], f"the page opened dialogs: {self.dialogs}"
        assert self.errors == [], f"the page reported errors: {self.errors}"


@dataclass
class Browsing:
    """A fresh browser tab and what it reported."""

    page: Any
    watch: PageWatch
    context: Any


def _new_tab(browser: Any, **context_options: Any) -> Browsing:
    context = browser.new_context(**context_options)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(20_000)
    watch = PageWatch()

    def on_console(message: Any) -> None:
        # Failed loads show as console errors too; a 404 the page expects would be a bug.
        if message.type == "error":
            watch.errors.append(message.text)

    def on_dialog(dialog: Any) -> None:
        watch.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda error: watch.errors.append(f"uncaught: {error}"))
    page.on("dialog", on_dialog)
    return Browsing(page, watch, context)


def _screenshot_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]


@pytest.fixture
def tab_factory(browser: Any, request: pytest.FixtureRequest) -> Iterator[Callable[..., Browsing]]:
    """Open tabs with context options (viewport, ...); on failure each leaves a screenshot."""
    opened: list[Browsing] = []

    def open_tab(**context_options: Any) -> Browsing:
        context_options.setdefault("viewport", {"width": 1280, "height": 900})
        browsing = _new_tab(browser, **context_options)
        opened.append(browsing)
        return browsing

    yield open_tab
    if _failed(request):
        directory = artifacts_dir(request.config)
        directory.mkdir(parents=True, exist_ok=True)
        for number, browsing in enumerate(opened):
            target = directory / f"{_screenshot_name(request)}-{number}.png"
            try:
                browsing.page.screenshot(path=str(target), full_page=True)
            except Exception as error:  # a crashed page must not hide the real failure
                print(f"no screenshot of tab {number}: {error}", file=sys.stderr)
            else:
                print(f"screenshot of the failed page: {target}", file=sys.stderr)
    for browsing in opened:
        browsing.context.close()


@pytest.fixture
def tab(tab_factory: Callable[..., Browsing]) -> Browsing:
    return tab_factory()


# Servers ------------------------------------------------------------------------------------


@dataclass
class LiveServer:
    """A `captioner serve` process on a loopback port, with its data dir and log."""

    url: str
    data_dir: Path
    log: Path


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(
        f"the server was not ready in {SERVER_START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture
def live_server(
    tiny_blip_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    """The real server (gunicorn, real adapters, tiny random-weight BLIP) in a subprocess."""
    command = shutil.which("captioner", path=str(Path(sys.executable).parent))
    assert command, "the captioner console script is not installed next to this Python"
    port = _free_port()
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")},
        "CAPTIONER_HOST": "127.0.0.1",
        "CAPTIONER_PORT": str(port),
        "CAPTIONER_MODEL": str(tiny_blip_dir),
        "CAPTIONER_DATA_DIR": str(data_dir),
        "CAPTIONER_MAX_NEW_TOKENS": "8",
        "CAPTIONER_THREADS": "4",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [command, "serve"], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, process, log)
        yield LiveServer(url, data_dir, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if _failed(request):
            print(f"server log:\n{log.read_text()[-4000:]}", file=sys.stderr)


@dataclass
class FastServer:
    """The Flask app with real storage and a colour-naming captioner, served from a thread."""

    url: str
    service: Any


class ColourCaptioner:
    """Names an image's average colour: quick, deterministic captions that tests can search."""

    model_name = "colour-namer"
    COLOURS: ClassVar[dict[str, tuple[int, int, int]]] = {
        "red": (200, 30, 30),
        "green": (30, 160, 60),
        "blue": (30, 60, 200),
        "yellow": (230, 210, 40),
        "black": (10, 10, 10),
        "white": (245, 245, 245),
    }

    def __init__(self, caption_template: str = "a {colour} square") -> None:
        self.caption_template = caption_template
        self.busy_for = 0  # the next this many captions answer "busy", as a full queue does
        from captioner.domain.model import Readiness

        self.ready = Readiness.ok()  # tests set it: loading, or failed for good

    def readiness(self) -> Any:
        return self.ready

    def wait_until_ready(self, timeout: float | None = None) -> Any:
        return self.readiness()

    @property
    def provenance(self) -> Any:
        from captioner.domain.model import Provenance

        return Provenance.of("colour-rev-1", {"max_new_tokens": 5, "num_beams": 1})

    def describe(self, image: Any, prompt: str) -> Any:
        from captioner.domain.errors import CaptionerBusy
        from captioner.domain.model import Caption

        if self.busy_for > 0:
            self.busy_for -= 1
            raise CaptionerBusy("The model is busy; try again in a few seconds.")
        pixels = image.pixels
        assert isinstance(pixels, Image.Image)
        mean = pixels.resize((1, 1)).getpixel((0, 0))
        assert isinstance(mean, tuple)
        colour = min(
            self.COLOURS,
            key=lambda name: sum(
                (a - b) ** 2 for a, b in zip(self.COLOURS[name], mean[:3], strict=True)
            ),
        )
        return Caption(f"{prompt} {self.caption_template.format(colour=colour)}".strip(), 42.0)


@pytest.fixture
def colour_captioner() -> ColourCaptioner:
    return ColourCaptioner()


@pytest.fixture
def fast_server(tmp_path: Path, colour_captioner: ColourCaptioner) -> Iterator[FastServer]:
    """No model to load: for what the page does, not what the model says."""
    from dependency_injector import providers
    from werkzeug.serving import make_server

    from captioner.config import Settings
    from captioner.container import build_container
    from captioner.entrypoints.http import create_app

    container = build_container(Settings(data_dir=tmp_path / "data", max_upload_mb=2))
    container.captioner.override(providers.Object(colour_captioner))
    app = create_app(container)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="gallery-test-server", daemon=True)
    thread.start()
    try:
        yield FastServer(f"http://127.0.0.1:{server.server_port}", container.service())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (96, 72)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()
