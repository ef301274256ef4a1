"""The gallery behind API keys, in headless Chromium: sign in, upload, what a key allows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from captioner.domain.access import AccessService, Scope
from tests.browser.conftest import Browsing, ColourCaptioner, png
from tests.browser.test_gallery_browser import cards, choose_files, expect, finished_upload

pytestmark = pytest.mark.browser


@dataclass
class KeyedServer:
    url: str
    access: AccessService
    secrets: dict[Scope, str]


@pytest.fixture
def keyed_server(tmp_path: Path, colour_captioner: ColourCaptioner) -> Iterator[KeyedServer]:
    """A server on 127.0.0.1 with a key of each scope, so keys are required (auth = auto)."""
    from dependency_injector import providers
    from werkzeug.serving import make_server

    from captioner.config import Settings
    from captioner.container import build_container
    from captioner.entrypoints.http import create_app

    container = build_container(Settings(data_dir=tmp_path / "data", max_upload_mb=2))
    container.captioner.override(providers.Object(colour_captioner))
    access = container.access()
    secrets = {scope: access.create_key(scope, f"{scope.value}-key").secret for scope in Scope}
    server = make_server("127.0.0.1", 0, create_app(container), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="sign-in-test-server", daemon=True)
    thread.start()
    try:
        yield KeyedServer(f"http://127.0.0.1:{server.server_port}", access, secrets)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def sign_in(page: Any, secret: str) -> None:
    page.fill("#sign-in-key", secret)
    page.click("#sign-in-submit")


def storage_items(page: Any) -> int:
    return int(page.evaluate("() => localStorage.length + sessionStorage.length"))


def test_sign_in_upload_and_sign_out_with_an_upload_key(
    keyed_server: KeyedServer, tab: Browsing
) -> None:
    page = tab.page
    secret = keyed_server.secrets[Scope.UPLOAD]
    page.goto(keyed_server.url)

    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#gallery-section")).to_be_hidden()
    expect(page.locator("#upload-section")).to_be_hidden()

    sign_in(page, secret)

    expect(page.locator("#account-name")).to_have_text("upload-key")
    expect(page.locator("#account-scope")).to_have_text("(can view and upload)")
    expect(page.locator("#sign-in")).to_be_hidden()
    expect(page.locator("#sign-in-key")).to_have_value("")
    choose_files(page, ("red.png", png((200, 30, 30))))
    finished_upload(page, "red.png")
    expect(cards(page)).to_have_count(1)
    cards(page).first.locator(".card-button").click()
    expect(page.locator("#detail-caption")).to_have_text("a red square")
    expect(page.locator("#danger-zone")).to_be_hidden()  # deleting needs admin
    page.click("#detail-close")

    cookie = next(c for c in tab.context.cookies() if c["name"] == "captioner_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert secret not in cookie["value"]
    assert page.evaluate("() => document.cookie") == ""  # the scripts cannot read it
    assert storage_items(page) == 0

    page.click("#sign-out")

    expect(page.locator("#sign-in")).to_be_visible()
    expect(cards(page)).to_have_count(0)
    expect(page.locator("#account")).to_be_hidden()
    assert not any(c["name"] == "captioner_session" for c in tab.context.cookies())
    page.reload()
    expect(page.locator("#sign-in")).to_be_visible()
    tab.watch.assert_quiet()


def test_a_read_key_sees_images_but_no_upload_and_no_delete(
    keyed_server: KeyedServer, tab: Browsing
) -> None:
    page = tab.page
    page.goto(keyed_server.url)
    sign_in(page, keyed_server.secrets[Scope.UPLOAD])
    expect(page.locator("#account-name")).to_have_text("upload-key")
    choose_files(page, ("blue.png", png((30, 60, 200))))
    finished_upload(page, "blue.png")
    page.click("#sign-out")

    expect(page.locator("#sign-in")).to_be_visible()
    sign_in(page, keyed_server.secrets[Scope.READ])

    expect(page.locator("#account-scope")).to_have_text("(can view)")
    expect(cards(page)).to_have_count(1)
    expect(page.locator("#upload-section")).to_be_hidden()
    cards(page).first.locator(".card-button").click()
    expect(page.locator("#danger-zone")).to_be_hidden()
    expect(page.locator("#edit-start")).to_be_hidden()  # correcting needs upload
    page.click("#detail-close")
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    sign_in(page, keyed_server.secrets[Scope.ADMIN])
    expect(page.locator("#account-name")).to_have_text("admin-key")
    cards(page).first.locator(".card-button").click()
    expect(page.locator("#danger-zone")).to_be_visible()
    expect(page.locator("#edit-start")).to_be_visible()
    tab.watch.assert_quiet()


def test_a_wrong_key_says_so_and_a_revoked_key_sends_the_page_back_to_sign_in(
    keyed_server: KeyedServer, tab: Browsing
) -> None:
    page = tab.page
    page.goto(keyed_server.url)

    sign_in(page, "cap_not-a-real-key")

    expect(page.locator("#sign-in-error")).to_contain_text("not known")
    # The key is revoked only once the listing that signing in starts has been answered:
    # a revoke racing that request would end the sign-in before the search below.
    with page.expect_response(lambda response: "/images?" in response.url) as listing:
        sign_in(page, keyed_server.secrets[Scope.READ])
    assert listing.value.status == 200
    expect(page.locator("#sign-in")).to_be_hidden()

    keyed_server.access.revoke_key("read-key")
    page.fill("#search", "red")

    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#sign-in-error")).to_contain_text("sign-in has ended")
    # Only the two refusals the test asked for reached the console, as failed loads.
    assert len(tab.watch.errors) == 2
    assert all("401" in error for error in tab.watch.errors)
    assert storage_items(page) == 0
