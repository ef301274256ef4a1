"""Downloads are named as uploaded: a safe file name, and a Content-Disposition any client reads."""

from __future__ import annotations

import io
from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st
from werkzeug.http import parse_options_header

from captioner.domain.downloads import (
    MAX_DOWNLOAD_NAME_CHARS,
    content_disposition,
    download_name,
)
from captioner.domain.model import ImageRecord
from tests.support.fakes import fake_image
from tests.unit.conftest import FakeWorld

SHA = "ab" * 32
# Any text, lone surrogates included: how Python spells the bytes of a name not in UTF-8.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=400)
NOT_UTF8 = st.binary(max_size=300).map(lambda raw: raw.decode("utf-8", "surrogateescape"))
# Names a person might give: printable, no separators, no leading dot, short.
PLAIN_NAMES = st.text(
    st.characters(categories=("L", "N", "P", "S", "Zs"), exclude_characters="/\\"),
    min_size=1,
    max_size=60,
).filter(lambda name: name == name.strip().strip(".").strip() and name.isprintable())


def record(original_name: str | None, path: str = f"uploads/ab/ab/{SHA}.jpg") -> ImageRecord:
    return ImageRecord(
        id=1,
        sha256=SHA,
        path=path,
        description="a cat",
        model="m",
        prompt="",
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        width=1,
        height=1,
        content_type="image/jpeg",
        original_name=original_name,
    )


def offered_name(header: str) -> tuple[str, str]:
    """What a client reads: (the RFC 8187 name when given, else the plain one; the plain one)."""
    disposition, options = parse_options_header(header)
    assert disposition == "inline"
    plain = header.split('filename="', 1)[1].split('"', 1)[0]
    return options["filename"], plain


def test_a_download_is_named_as_it_was_uploaded() -> None:
    assert download_name(record("Holiday 2025.jpg")) == "Holiday 2025.jpg"


def test_a_record_without_its_original_name_is_named_by_digest() -> None:
    assert download_name(record(None)) == f"{SHA}.jpg"
    assert download_name(record("../../")) == f"{SHA}.jpg"


def test_a_name_without_an_extension_gets_the_stored_files() -> None:
    assert download_name(record("scan", path=f"uploads/ab/ab/{SHA}.png")) == "scan.png"


def test_an_ascii_name_is_sent_plain() -> None:
    assert content_disposition("cat.jpg") == 'inline; filename="cat.jpg"'


def test_a_non_ascii_name_is_sent_exactly_with_an_ascii_look_alike() -> None:
    assert content_disposition("Été à Zürich.jpg") == (
        'inline; filename="Ete a Zurich.jpg"; '
        "filename*=UTF-8''%C3%89t%C3%A9%20%C3%A0%20Z%C3%BCrich.jpg"
    )


def test_quotes_and_header_breaking_characters_never_reach_the_plain_name() -> None:
    header = content_disposition('a"b\r\nSet-Cookie: x=1;\\c.jpg')

    name, plain = offered_name(header)
    assert not set(header) & {"\r", "\n"}
    assert name == "c.jpg"  # the last path segment after the backslash
    assert plain == "c.jpg"


def test_a_very_long_name_is_cut_keeping_its_extension() -> None:
    name = download_name(record("x" * 5000 + ".jpeg"))

    assert len(name) == MAX_DOWNLOAD_NAME_CHARS
    assert name.endswith("x.jpeg")


@given(st.one_of(ANY_TEXT, NOT_UTF8))
def test_any_name_gives_a_header_that_is_ascii_one_line_and_names_a_bare_file(
    original: str,
) -> None:
    header = content_disposition(download_name(record(original)))

    assert header.isascii()
    assert all(" " <= character < "\x7f" for character in header)
    name, plain = offered_name(header)
    for offered in (name, plain):
        assert offered
        assert not set(offered) & {"/", "\\"}
        assert not offered.startswith(".")
        assert offered.isprintable()
        assert len(offered) <= MAX_DOWNLOAD_NAME_CHARS + 5
    assert not set(plain) & set('"%;,*')


@given(PLAIN_NAMES)
def test_a_plain_name_reaches_the_client_unchanged(original: str) -> None:
    name, _ = offered_name(content_disposition(original))

    assert name == original


def test_the_file_route_sends_the_original_name(fake_world: FakeWorld) -> None:
    uploaded = fake_world.client.post(
        "/upload", data={"image": (io.BytesIO(fake_image("cat")), "Chat noir № 1.jpg")}
    )
    image_id = uploaded.get_json()["id"]

    response = fake_world.client.get(f"/images/{image_id}/file")
    response.close()

    assert response.headers["Content-Disposition"] == content_disposition("Chat noir № 1.jpg")
    assert offered_name(response.headers["Content-Disposition"])[0] == "Chat noir № 1.jpg"
