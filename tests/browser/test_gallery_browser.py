"""The gallery as a person uses it, in headless Chromium against a real server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from captioner.domain.model import ImageUpload
from tests.browser.conftest import Browsing, ColourCaptioner, FastServer, LiveServer, png
from tests.support.heif_images import heic

pytestmark = pytest.mark.browser

MODEL_TIMEOUT_MS = 90_000
RED = png((200, 30, 30))
BLUE = png((30, 60, 200))


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def open_gallery(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#loading", state="hidden")


def choose_files(page: Any, *files: tuple[str, bytes]) -> None:
    """What the file picker hands the page after the person picked ``files``."""
    page.set_input_files(
        "#file-input",
        files=[{"name": name, "mimeType": "image/png", "buffer": data} for name, data in files],
    )


def drop_files(page: Any, *files: tuple[str, bytes]) -> None:
    """Drag files from the desktop onto the drop zone: dragenter, dragover, drop."""
    payload = [{"name": n, "b64": base64.b64encode(d).decode()} for n, d in files]
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const file of files) {
                const bytes = Uint8Array.from(atob(file.b64), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], file.name, { type: "image/png" }));
            }
            return transfer;
        }""",
        payload,
    )
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    expect(page.locator("#dropzone")).to_have_class("dropzone is-dragging")
    page.dispatch_event("#dropzone", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#dropzone")).to_have_class("dropzone")


def finished_upload(page: Any, name: str, state: str = "done") -> Any:
    item = page.locator(".upload-item").filter(has=page.locator(".upload-name", has_text=name))
    expect(item).to_have_attribute("data-state", state, timeout=MODEL_TIMEOUT_MS)
    return item


def cards(page: Any) -> Any:
    return page.locator("#grid .card")


def images_have_loaded(page: Any, selector: str) -> None:
    page.wait_for_function(
        """(selector) => {
            const images = [...document.querySelectorAll(selector)];
            return images.length > 0 && images.every((i) => i.complete && i.naturalWidth > 0);
        }""",
        arg=selector,
    )


def word_only_in(caption: str, other: str) -> str:
    """A word of ``caption`` that search (words as prefixes) cannot match in ``other``."""
    others = other.lower().split()
    candidates = [
        word
        for word in caption.lower().split()
        if word.isalpha() and not any(o.startswith(word) for o in others)
    ]
    if not candidates:
        pytest.fail(f"the captions share every word: {caption!r} / {other!r}")
    return max(candidates, key=len)


def seed(server: FastServer, count: int) -> None:
    for n in range(count):
        data = png((200, 30 + n, 30))
        server.service.describe(ImageUpload(io.BytesIO(data), f"red-{n}.png"))


# The real server: gunicorn, SQLite, files on disk, the tiny BLIP model ------------------------


@pytest.mark.slow
def test_upload_two_search_open_and_delete_in_a_real_browser(
    live_server: LiveServer, tab: Browsing
) -> None:
    page = tab.page
    open_gallery(page, live_server.url)
    expect(page.locator("#empty-state")).to_be_visible()

    # Captions of a random-weight model ignore the pixels; prompts make the two differ.
    page.fill("#prompt", "tree")
    choose_files(page, ("red.png", RED))
    first = finished_upload(page, "red.png")
    expect(first.locator(".badge")).to_have_text("Captioned")
    first_caption = first.locator(".upload-status").inner_text()

    page.fill("#prompt", "water")
    drop_files(page, ("blue.png", BLUE))
    second = finished_upload(page, "blue.png")
    second_caption = second.locator(".upload-status").inner_text()

    assert first_caption.startswith("tree")
    assert second_caption.startswith("water")
    expect(cards(page)).to_have_count(2)
    expect(cards(page).locator(".card-caption")).to_have_text([second_caption, first_caption])
    expect(cards(page).locator("img").nth(0)).to_have_attribute("alt", second_caption)
    expect(cards(page).locator("img").nth(1)).to_have_attribute("alt", first_caption)
    expect(page.locator("#empty-state")).to_be_hidden()
    images_have_loaded(page, "#grid img")

    page.fill("#prompt", "tree")
    choose_files(page, ("red-again.png", RED))
    again = finished_upload(page, "red-again.png", state="duplicate")
    expect(again.locator(".badge")).to_have_text("Already in gallery")
    expect(again.locator(".upload-status")).to_have_text(first_caption)
    expect(cards(page)).to_have_count(2)

    word = word_only_in(first_caption, second_caption)
    page.fill("#search", word)
    expect(cards(page)).to_have_count(1)
    expect(cards(page).locator(".card-caption")).to_have_text(first_caption)
    expect(page.locator("#gallery-summary")).to_contain_text("1 match for")
    assert f"q={word}" in page.url
    page.fill("#search", "")
    expect(cards(page)).to_have_count(2)

    records = {r["description"]: r for r in requests.get(f"{live_server.url}/images").json()}
    red = records[first_caption]
    cards(page).filter(has_text=first_caption).locator("button").click()
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-caption")).to_have_text(first_caption)
    expect(page.locator("#detail-image")).to_have_attribute("alt", first_caption)
    expect(page.locator("#detail-name")).to_have_text("red.png")
    expect(page.locator("#detail-prompt")).to_have_text("tree")
    expect(page.locator("#detail-model")).to_have_text(red["model"])
    expect(page.locator("#detail-size")).to_have_text("96 \u00d7 72 px \u00b7 PNG")
    expect(page.locator("#detail-sha")).to_have_text(red["sha256"])
    expect(page.locator("#detail-revision")).to_have_text(red["model_revision"])
    tokens = red["generation"]["max_new_tokens"]
    expect(page.locator("#detail-generation")).to_have_text(f"max_new_tokens={tokens}, num_beams=1")
    expect(page.locator("#detail-captions li")).to_have_count(1)
    images_have_loaded(page, "#detail-image")

    page.click("#copy-caption")
    expect(page.locator("#toast")).to_have_text("Caption copied")
    assert page.evaluate("navigator.clipboard.readText()") == first_caption

    page.click("#delete-start")
    expect(page.locator("#delete-confirm")).to_be_visible()
    page.click("#delete-cancel")
    expect(page.locator("#delete-confirm")).to_be_hidden()
    expect(cards(page)).to_have_count(2)
    page.click("#delete-start")
    page.click("#delete-yes")
    expect(page.locator("#detail")).to_be_hidden()
    expect(page.locator("#toast")).to_have_text("Image deleted")
    expect(cards(page)).to_have_count(1)

    page.reload()
    page.wait_for_selector("#loading", state="hidden")
    expect(cards(page)).to_have_count(1)
    expect(cards(page).locator(".card-caption")).to_have_text(second_caption)
    assert requests.get(f"{live_server.url}/images/{red['id']}").status_code == 404
    thumbnails = sorted(p.name for p in (live_server.data_dir / "thumbnails").rglob("*.webp"))
    assert thumbnails == [f"{records[second_caption]['sha256']}.webp"]
    tab.watch.assert_quiet()


@pytest.mark.slow
def test_a_file_name_with_markup_shows_as_text(live_server: LiveServer, tab: Browsing) -> None:
    page = tab.page
    name = "<img src=x onerror=alert(1)><script>alert(2)<script>.png"
    open_gallery(page, live_server.url)

    choose_files(page, (name, RED))

    item = finished_upload(page, "alert(2)")
    expect(item.locator(".upload-name")).to_have_text(name)
    expect(cards(page).locator(".card-name")).to_have_text(name)
    cards(page).locator("button").click()
    expect(page.locator("#detail-name")).to_have_text(name)
    assert page.locator("script").count() == 1
    assert page.locator("img:not(.thumb-image, .upload-preview-image, #detail-image)").count() == 0
    tab.watch.assert_quiet()


# A fast server (real storage, a colour-naming captioner): what the page does ----------------


def test_first_visit_tells_a_person_what_to_do(fast_server: FastServer, tab: Browsing) -> None:
    page = tab.page
    open_gallery(page, fast_server.url)

    empty = page.locator("#empty-state")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("No images yet")
    expect(empty).to_contain_text("Choose images")
    expect(cards(page)).to_have_count(0)
    expect(page.locator("#load-more")).to_be_hidden()
    tab.watch.assert_quiet()


def test_a_caption_with_markup_shows_as_text_everywhere(
    fast_server: FastServer, colour_captioner: ColourCaptioner, tab: Browsing
) -> None:
    colour_captioner.caption_template = (
        "<img src=x onerror=alert(1)> {colour} <script>alert(2)</script>"
    )
    caption = "<img src=x onerror=alert(1)> red <script>alert(2)</script>"
    page = tab.page
    open_gallery(page, fast_server.url)

    choose_files(page, ("red.png", RED))

    expect(finished_upload(page, "red.png").locator(".upload-status")).to_have_text(caption)
    expect(cards(page).locator(".card-caption")).to_have_text(caption)
    expect(cards(page).locator("img")).to_have_attribute("alt", caption)
    cards(page).locator("button").click()
    expect(page.locator("#detail-caption")).to_have_text(caption)
    expect(page.locator("#detail-image")).to_have_attribute("alt", caption)
    assert page.locator("script").count() == 1
    tab.watch.assert_quiet()


def test_detail_lists_every_caption_of_the_image_with_its_provenance(
    fast_server: FastServer, tab: Browsing
) -> None:
    for prompt in ("", "a drawing of"):
        fast_server.service.describe(ImageUpload(io.BytesIO(RED), "red.png", prompt))
    page = tab.page
    open_gallery(page, fast_server.url)

    expect(cards(page)).to_have_count(1)  # one image, however many captions
    cards(page).first.locator("button").click()  # shown with its caption without a prompt

    expect(page.locator("#detail-revision")).to_have_text("colour-rev-1")
    expect(page.locator("#detail-generation")).to_have_text("max_new_tokens=5, num_beams=1")
    expect(page.locator("#detail-duration")).to_have_text("42 ms")
    captions = page.locator("#detail-captions li")
    expect(captions).to_have_count(2)
    expect(captions.nth(0).locator("p").first).to_have_text("a red square")
    expect(captions.nth(1).locator("p").first).to_have_text("a drawing of a red square")
    expect(captions.nth(1).locator(".caption-meta")).to_contain_text(
        "colour-namer · prompt “a drawing of” · revision colour-rev-1"
    )
    tab.watch.assert_quiet()


def test_after_a_recaption_each_image_shows_once_naming_its_model_and_another_can_be_picked(
    fast_server: FastServer, tab: Browsing, tmp_path: Path
) -> None:
    from dependency_injector import providers

    from captioner.config import Settings
    from captioner.container import build_container

    for name, data in (("red.png", RED), ("blue.png", BLUE)):
        fast_server.service.describe(ImageUpload(io.BytesIO(data), name))

    class ShapeNamer(ColourCaptioner):
        model_name = "shape-namer"

    recaptioning = build_container(Settings(data_dir=tmp_path / "data"))
    recaptioning.captioner.override(providers.Object(ShapeNamer("a {colour} shape")))
    other = recaptioning.service()
    for record in list(other.waiting_for_caption()):
        other.recaption(record)
    page = tab.page
    open_gallery(page, fast_server.url)

    expect(cards(page)).to_have_count(2)
    expect(cards(page).locator(".card-model")).to_have_text(
        ["colour-namer · 2 captions", "colour-namer · 2 captions"]
    )
    expect(cards(page).locator(".card-model").first).to_have_attribute("title", "colour-namer")
    page.locator("#model-pick").select_option("shape-namer")
    expect(cards(page).locator(".card-caption")).to_have_text(["a blue shape", "a red shape"])
    page.screenshot(path=str(tmp_path / "gallery-after-recaption.png"))
    assert page.url.endswith("?model=shape-namer")
    page.reload()
    expect(cards(page).locator(".card-model")).to_have_text(
        ["shape-namer · 2 captions", "shape-namer · 2 captions"]
    )
    tab.watch.assert_quiet()


def test_more_images_load_as_the_person_scrolls(fast_server: FastServer, tab: Browsing) -> None:
    seed(fast_server, 45)
    page = tab.page
    open_gallery(page, fast_server.url)
    expect(cards(page)).to_have_count(30)

    page.locator("#more").scroll_into_view_if_needed()

    expect(cards(page)).to_have_count(45)
    ids = [int(i) for i in cards(page).evaluate_all("cards => cards.map(c => c.dataset.id)")]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 45
    expect(page.locator("#gallery-summary")).to_have_text("45 images, newest first")
    tab.watch.assert_quiet()


def test_a_file_that_is_not_an_image_shows_the_servers_reason(
    fast_server: FastServer, tab: Browsing
) -> None:
    page = tab.page
    open_gallery(page, fast_server.url)

    page.set_input_files(
        "#file-input",
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"shopping list"}],
    )

    item = finished_upload(page, "notes.txt", state="error")
    expect(item.locator(".badge")).to_have_text("Not added")
    expect(item.locator(".upload-status")).to_contain_text("not a supported image")
    expect(page.locator("#empty-state")).to_be_visible()
    # The browser logs the 415 itself; nothing else may go wrong.
    assert all("415" in error for error in tab.watch.errors), tab.watch.errors


@pytest.mark.parametrize(("name", "kind"), [("scan.tiff", "TIFF"), ("IMG_0001.HEIC", "HEIC")])
def test_detail_shows_an_image_the_browser_cannot_decode_through_its_thumbnail(
    fast_server: FastServer, tab: Browsing, name: str, kind: str
) -> None:
    picture = Image.new("RGB", (640, 480), (30, 160, 60))
    if kind == "HEIC":
        data = heic(picture)
    else:
        buffer = io.BytesIO()
        picture.save(buffer, "TIFF")
        data = buffer.getvalue()
    fast_server.service.describe(ImageUpload(io.BytesIO(data), name))
    page = tab.page
    open_gallery(page, fast_server.url)

    cards(page).locator("button").click()

    images_have_loaded(page, "#detail-image")
    expect(page.locator("#detail-image")).to_have_attribute("src", re.compile("/thumbnail"))
    expect(page.locator("#detail-size")).to_have_text(f"640 \u00d7 480 px \u00b7 {kind}")
    # The original stays one click away.
    expect(page.locator("#detail-original")).to_have_attribute("href", re.compile("/file"))
    tab.watch.assert_quiet()


def test_closing_the_detail_while_a_delete_is_on_its_way_still_deletes_quietly(
    fast_server: FastServer, tab: Browsing
) -> None:
    seed(fast_server, 1)
    page = tab.page
    open_gallery(page, fast_server.url)
    held: list[Any] = []

    def hold_deletes(route: Any) -> None:
        if route.request.method == "DELETE":
            held.append(route)  # answered below, once the dialog is closed
        else:
            route.continue_()

    page.route(re.compile(r"/images/\d+$"), hold_deletes)
    cards(page).locator("button").click()
    page.click("#delete-start")
    page.click("#delete-yes")
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(25)  # lets Playwright hand over the route
    assert len(held) == 1

    page.click("#detail-close")
    expect(page.locator("#detail")).to_be_hidden()
    held[0].continue_()

    expect(page.locator("#toast")).to_have_text("Image deleted")
    expect(cards(page)).to_have_count(0)
    expect(page.locator("#detail")).to_be_hidden()
    tab.watch.assert_quiet()


def test_an_upload_refused_while_the_model_is_busy_can_be_tried_again(
    fast_server: FastServer, colour_captioner: ColourCaptioner, tab: Browsing
) -> None:
    colour_captioner.busy_for = 1
    page = tab.page
    open_gallery(page, fast_server.url)

    choose_files(page, ("red.png", RED))
    refused = finished_upload(page, "red.png", state="error")
    expect(refused.locator(".upload-status")).to_contain_text("busy")
    refused.locator(".upload-retry").click()

    expect(finished_upload(page, "red.png").locator(".upload-status")).to_have_text("a red square")
    expect(refused.locator(".upload-retry")).to_be_hidden()
    expect(cards(page)).to_have_count(1)
    assert all("503" in error for error in tab.watch.errors), tab.watch.errors


def test_search_from_the_address_and_fts_syntax_in_the_box(
    fast_server: FastServer, tab: Browsing
) -> None:
    seed(fast_server, 2)
    fast_server.service.describe(ImageUpload(io.BytesIO(BLUE), "blue.png"))
    page = tab.page

    open_gallery(page, f"{fast_server.url}/?q=blue")
    expect(page.locator("#search")).to_have_value("blue")
    expect(cards(page)).to_have_count(1)
    expect(cards(page).locator(".card-name")).to_have_text("blue.png")

    page.fill("#search", '"(* NEAR(')
    expect(page.locator("#no-results")).to_be_visible()
    expect(page.locator("#gallery-error")).to_be_hidden()
    page.click("#clear-search")
    expect(cards(page)).to_have_count(3)
    tab.watch.assert_quiet()


def test_gallery_works_from_the_keyboard(fast_server: FastServer, tab: Browsing) -> None:
    seed(fast_server, 2)
    page = tab.page
    open_gallery(page, fast_server.url)
    expect(cards(page)).to_have_count(2)

    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('card-button')"):
            break
    else:
        pytest.fail("Tab never reached a gallery card")
    focused_id = page.evaluate("document.activeElement.closest('.card').dataset.id")
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()

    assert page.evaluate("document.activeElement.closest('.card').dataset.id") == focused_id
    tab.watch.assert_quiet()


def test_narrow_phone_screen_shows_two_columns_without_sideways_scrolling(
    fast_server: FastServer, tab_factory: Any
) -> None:
    seed(fast_server, 3)
    phone = tab_factory(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = phone.page
    open_gallery(page, fast_server.url)
    expect(cards(page)).to_have_count(3)

    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    columns = page.evaluate("getComputedStyle(document.getElementById('grid')).gridTemplateColumns")
    assert len(columns.split()) == 2
    cards(page).first.locator("button").tap()
    expect(page.locator("#detail")).to_be_visible()
    box = page.locator("#detail").bounding_box()
    assert box is not None
    assert box["width"] <= 390
    page.locator("#delete-start").scroll_into_view_if_needed()
    expect(page.locator("#delete-start")).to_be_in_viewport()
    phone.watch.assert_quiet()


def test_the_gallery_says_the_model_is_loading_and_clears_it_once_loaded(
    tab: Browsing, fast_server: FastServer, colour_captioner: ColourCaptioner
) -> None:
    from captioner.domain.model import Readiness

    colour_captioner.ready = Readiness(False, "model colour-namer is loading")
    page = tab.page
    open_gallery(page, fast_server.url)
    banner = page.locator("#model-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("The model is loading")

    colour_captioner.ready = Readiness.ok()

    expect(banner).to_have_count(0, timeout=10_000)  # /readyz is asked every 3 s
    expect(page.locator("#file-input")).to_be_enabled()


def test_the_gallery_says_why_the_model_failed_to_load_and_takes_no_uploads(
    tab: Browsing, fast_server: FastServer, colour_captioner: ColourCaptioner
) -> None:
    from captioner.domain.model import Readiness

    reason = "model models/blip-bse could not be loaded: no such model directory: /srv/x"
    colour_captioner.ready = Readiness(False, reason, permanent=True)
    page = tab.page
    open_gallery(page, fast_server.url)

    alert = page.get_by_role("alert").filter(has_text="The model failed to load")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(reason)
    expect(page.locator("#file-input")).to_be_disabled()
    drop_files(page, ("red.png", RED))
    expect(page.locator(".upload-item")).to_have_count(0)
    expect(page.locator("footer")).to_contain_text("failed to load")
