"""The gallery page and thumbnails over HTTP, with fakes: safety headers, markup rules, caching."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from captioner.domain.model import Readiness
from tests.support.fakes import fake_image
from tests.unit.conftest import FakeWorld

STATIC = Path(__file__).parents[3] / "src/captioner/entrypoints/http/static"


class _Markup(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block, and every <img>."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.script_bodies: list[str] = []
        self.handlers: list[str] = []
        self.inline_styles: list[str] = []
        self.style_elements = 0
        self.images: list[dict[str, str | None]] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.handlers += [f"<{tag} {name}>" for name, _ in attrs if name.startswith("on")]
        if "style" in named:
            self.inline_styles.append(tag)
        if tag == "script":
            self.scripts.append(named)
            self._in_script = True
        elif tag == "style":
            self.style_elements += 1
        elif tag == "img":
            self.images.append(named)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_bodies.append(data)


def page(world: FakeWorld, path: str = "/") -> tuple[Any, _Markup]:
    response = world.client.get(path)
    markup = _Markup()
    markup.feed(response.get_data(as_text=True))
    return response, markup


def upload(world: FakeWorld, data: bytes, prompt: str = "") -> int:
    response = world.client.post(
        "/upload",
        data={"image": (io.BytesIO(data), "photo.png"), "prompt": prompt},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    image_id = response.get_json()["id"]
    assert isinstance(image_id, int)
    return image_id


def test_gallery_says_the_model_failed_to_load_and_why_and_turns_uploads_off(
    fake_world: FakeWorld,
) -> None:
    reason = "model m could not be loaded: no such model directory: /srv/models/blip-bse"
    fake_world.captioner.ready = Readiness(False, reason, permanent=True)

    html = fake_world.client.get("/").get_data(as_text=True)

    assert 'data-model-state="failed"' in html
    assert 'role="alert"' in html
    assert "The model failed to load: uploads are off" in html
    assert reason in html
    assert "CAPTIONER_MODEL" in html
    assert re.search(r'<input id="file-input"[^>]*\bdisabled\b', html)
    footer = html.split('<footer class="footer">', 1)[1]
    assert "Captions by" not in footer  # the footer no longer names it as the captioner
    assert "failed to load" in footer


def test_gallery_says_the_model_is_loading_while_it_loads(fake_world: FakeWorld) -> None:
    fake_world.captioner.ready = Readiness(False, "model m is loading")

    html = fake_world.client.get("/").get_data(as_text=True)

    assert 'data-model-state="loading"' in html
    assert "The model is loading" in html
    assert "model m is loading" in html
    assert not re.search(r'<input id="file-input"[^>]*\bdisabled\b', html)


def test_gallery_of_a_loaded_model_shows_no_model_banner(fake_world: FakeWorld) -> None:
    html = fake_world.client.get("/").get_data(as_text=True)

    assert 'data-model-state="ready"' in html
    assert 'id="model-banner"' not in html
    assert "Captions by" in html


def test_gallery_page_is_html_that_allows_scripts_only_from_the_service(
    fake_world: FakeWorld,
) -> None:
    response, _ = page(fake_world)

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy


def test_gallery_page_has_no_inline_script_style_or_event_handler(fake_world: FakeWorld) -> None:
    _, markup = page(fake_world)

    assert markup.scripts, "the page loads its script"
    assert all((s.get("src") or "").startswith("/static/") for s in markup.scripts)
    assert markup.script_bodies == []
    assert markup.handlers == []
    assert markup.inline_styles == []
    assert markup.style_elements == 0


def test_gallery_page_loads_only_assets_the_service_serves(fake_world: FakeWorld) -> None:
    html = fake_world.client.get("/").get_data(as_text=True)

    for asset in ("/static/gallery.js", "/static/gallery.css", "/static/icon.svg"):
        assert asset in html
        assert fake_world.client.get(asset, buffered=True).status_code == 200
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_search_words_from_the_address_come_back_escaped(fake_world: FakeWorld) -> None:
    attack = '"><script>alert(1)</script>'

    response, markup = page(fake_world, f"/?q={attack}")
    html = response.get_data(as_text=True)

    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert markup.script_bodies == []


def test_every_image_in_the_page_markup_has_an_alt_attribute(fake_world: FakeWorld) -> None:
    _, markup = page(fake_world)

    assert markup.images
    assert all("alt" in image for image in markup.images)


def test_page_script_never_parses_data_as_html() -> None:
    script = (STATIC / "gallery.js").read_text()

    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


def test_thumbnail_is_made_once_and_cached_as_immutable(fake_world: FakeWorld) -> None:
    image_id = upload(fake_world, fake_image("cat"))

    first = fake_world.client.get(f"/images/{image_id}/thumbnail")
    second = fake_world.client.get(f"/images/{image_id}/thumbnail")

    assert first.status_code == second.status_code == 200
    assert first.mimetype == "image/webp"
    assert first.data == second.data == b"THUMB:" + fake_image("cat")
    assert "immutable" in first.headers["Cache-Control"]
    assert "max-age=31536000" in first.headers["Cache-Control"]
    assert first.headers["ETag"]
    assert "Content-Security-Policy" not in first.headers
    assert fake_world.thumbnails.made == 1


def test_thumbnail_answers_304_when_the_browser_has_it(fake_world: FakeWorld) -> None:
    image_id = upload(fake_world, fake_image("cat"))
    etag = fake_world.client.get(f"/images/{image_id}/thumbnail").headers["ETag"]

    again = fake_world.client.get(f"/images/{image_id}/thumbnail", headers={"If-None-Match": etag})

    assert again.status_code == 304
    assert again.data == b""


def test_thumbnail_of_an_unknown_image_is_a_404_json(fake_world: FakeWorld) -> None:
    response = fake_world.client.get("/images/999/thumbnail")

    assert response.status_code == 404
    assert "999" in response.get_json()["error"]


def test_deleting_an_image_over_http_removes_its_thumbnail(fake_world: FakeWorld) -> None:
    image_id = upload(fake_world, fake_image("cat"))
    fake_world.client.get(f"/images/{image_id}/thumbnail")

    deleted = fake_world.client.delete(f"/images/{image_id}")

    assert deleted.status_code == 200
    assert fake_world.thumbnails.files == {}
    assert fake_world.client.get(f"/images/{image_id}/thumbnail").status_code == 404


def test_thumbnail_of_an_original_that_cannot_be_shrunk_is_a_4xx_not_a_500(
    fake_world: FakeWorld,
) -> None:
    image_id = upload(fake_world, fake_image("cat"))
    path = fake_world.repository.rows[image_id].path
    fake_world.store.files[path] = b"garbage"

    response = fake_world.client.get(f"/images/{image_id}/thumbnail")

    assert 400 <= response.status_code < 500
    assert "error" in response.get_json()
