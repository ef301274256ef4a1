"""Correcting a caption in the gallery with the keyboard alone, in headless Chromium."""

from __future__ import annotations

import io
from typing import Any

import pytest

from captioner.domain.access import Scope
from captioner.domain.model import ImageUpload
from tests.browser.conftest import Browsing, FastServer, png
from tests.browser.test_gallery_browser import cards, choose_files, finished_upload
from tests.browser.test_sign_in_browser import KeyedServer, keyed_server, sign_in

__all__ = ["keyed_server"]  # a fixture, used by name

pytestmark = pytest.mark.browser


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def test_a_caption_is_corrected_saved_and_found_with_the_keyboard_alone(
    fast_server: FastServer, tab: Browsing
) -> None:
    fast_server.service.describe(ImageUpload(io.BytesIO(png((200, 30, 30))), "red.png"))
    page = tab.page
    page.goto(fast_server.url)
    page.wait_for_selector("#loading", state="hidden")
    card = page.locator("#grid .card")
    expect(card.locator(".card-caption")).to_have_text("a red square")

    card.locator("button").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    page.locator("#edit-start").focus()
    page.keyboard.press("Enter")
    field = page.get_by_label("Correct the caption")
    expect(field).to_be_focused()
    expect(field).to_have_value("a red square")

    # Escape leaves the edit (not the dialog) and keeps the caption.
    page.keyboard.type("a wrong word")
    page.keyboard.press("Escape")
    expect(page.locator("#edit-form")).to_be_hidden()
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-caption")).to_have_text("a red square")
    expect(page.locator("#edit-start")).to_be_focused()

    # Enter saves.
    page.keyboard.press("Enter")
    page.keyboard.press("Control+A")
    page.keyboard.type("a crimson tile")
    page.keyboard.press("Enter")
    expect(page.locator("#detail-caption")).to_have_text("a crimson tile")
    expect(page.locator("#edit-start")).to_be_focused()
    expect(card.locator(".card-caption")).to_have_text("a crimson tile")
    expect(card.locator(".card-model")).to_have_text("edited · 2 captions")
    expect(page.locator("#detail-captions .caption-meta").nth(1)).to_contain_text(
        "edited by anonymous"
    )
    expect(page.locator("#announcer")).to_contain_text("Caption saved")

    # Ctrl+Enter saves too; a second edit replaces the first.
    page.keyboard.press("Enter")
    page.keyboard.press("Control+A")
    page.keyboard.type("a scarlet tile")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#detail-caption")).to_have_text("a scarlet tile")
    expect(page.locator("#detail-captions .caption-item")).to_have_count(2)

    # A blank caption is refused where the person is typing.
    page.keyboard.press("Enter")
    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")
    page.keyboard.press("Enter")
    expect(page.locator("#edit-error")).to_be_visible()
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")  # now the dialog closes
    expect(page.locator("#detail")).to_be_hidden()

    page.fill("#search", "scarlet")
    expect(card).to_have_count(1)
    expect(card.locator(".card-caption")).to_have_text("a scarlet tile")
    shown = fast_server.service.list().records
    assert [(r.source, r.description) for r in shown] == [("person", "a scarlet tile")]
    tab.watch.assert_quiet()


def test_an_edit_from_a_signed_in_browser_is_by_the_keys_name(
    keyed_server: KeyedServer, tab: Browsing
) -> None:
    page = tab.page
    page.goto(keyed_server.url)
    sign_in(page, keyed_server.secrets[Scope.UPLOAD])
    choose_files(page, ("blue.png", png((30, 60, 200))))
    finished_upload(page, "blue.png")
    cards(page).first.locator(".card-button").click()

    page.click("#edit-start")
    page.get_by_label("Correct the caption").fill("a navy tile")
    page.click("#edit-save")

    expect(page.locator("#detail-caption")).to_have_text("a navy tile")
    expect(page.locator("#detail-captions .caption-meta").nth(1)).to_contain_text(
        "edited by upload-key"
    )
    tab.watch.assert_quiet()
