"""What an installed captioner must answer over HTTP: gallery, /docs, upload, caption, repeat."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping

import httpx

from tests.conftest import png_bytes

_ASSET = re.compile(r"""(?:href|src)="([^"#?]+)""")


def wait_until_ready(base_url: str, alive: Callable[[], bool], timeout_s: float = 180.0) -> None:
    """Poll /readyz until 200; fail early when the server process is gone."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"the server exited before it was ready ({last})")
        try:
            answer = httpx.get(f"{base_url}/readyz", timeout=5)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout_s:g} s: {last}")


def page_and_its_assets(client: httpx.Client, path: str) -> str:
    """GET ``path`` and every local stylesheet, script and icon it names; all must be 200."""
    page = client.get(path)
    assert page.status_code == 200, (path, page.status_code)
    assets = [
        link
        for link in _ASSET.findall(page.text)
        if not link.startswith(("http:", "https:", "data:", "mailto:")) and "{" not in link
    ]
    for link in assets:
        target = link if link.startswith("/") else f"{path.rsplit('/', 1)[0]}/{link}"
        answer = client.get(target)
        assert answer.status_code == 200, (path, link, answer.status_code)
        assert answer.content, (path, link)
    return page.text


def serves_captions_and_repeats(base_url: str, headers: Mapping[str, str]) -> None:
    """The gallery and /docs with all their assets, an upload captioned, the same bytes again
    answered as a duplicate, and the listing holding exactly that one image."""
    with httpx.Client(base_url=base_url, headers=dict(headers), timeout=120) as client:
        gallery = page_and_its_assets(client, "/")
        assert "<html" in gallery.lower()
        page_and_its_assets(client, "/docs")
        assert client.get("/openapi.json").status_code == 200

        image = png_bytes((12, 120, 200))
        first = client.post("/upload", files={"image": ("photo.png", image, "image/png")})
        again = client.post("/upload", files={"image": ("copy.png", image, "image/png")})
        listed = client.get("/images")

    assert first.status_code == 200, first.text
    assert first.json()["description"]
    assert first.json()["duplicate"] is False
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["id"] == first.json()["id"]
    assert [record["id"] for record in listed.json()] == [first.json()["id"]]
