"""XMP sidecars: captioner's caption merged into a packet keeps everything else, a person's
description is told apart from captioner's, and hostile packets are refused."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from captioner.domain.model import PERSON_MODEL, ImageRecord, Provenance
from captioner.sidecars.files import sidecar_name
from captioner.sidecars.reading import from_xmp
from captioner.sidecars.xmp import UnreadableXmp, merged_xmp, read_xmp

DIGEST = "ab" * 32

LIGHTROOM = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
      xmlns:dc="http://purl.org/dc/elements/1.1/"
      xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmp:Rating="5">
   <dc:subject><rdf:Bag><rdf:li>beach</rdf:li><rdf:li>dog</rdf:li></rdf:Bag></dc:subject>
   <dc:description><rdf:Alt>
    <rdf:li xml:lang="de">Ein Hund am Strand</rdf:li>
    <rdf:li xml:lang="x-default">A dog on the beach</rdf:li>
   </rdf:Alt></dc:description>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>animals|dog</rdf:li></rdf:Bag></lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>"""


def record(description: str = "a cat on a mat", model: str = "blip") -> ImageRecord:
    return ImageRecord(
        id=7,
        sha256=DIGEST,
        path=f"uploads/{DIGEST}.jpg",
        description=description,
        model=model,
        prompt="",
        created_at=datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc),
        width=10,
        height=20,
        content_type="image/jpeg",
        original_name="cat.jpg",
        provenance=Provenance.of("rev1", {"max_new_tokens": 30, "prompt": ""}),
        duration_ms=812.5,
    )


def test_a_description_another_tool_wrote_is_a_persons_and_x_default_wins() -> None:
    found = read_xmp(LIGHTROOM)

    assert found.description == "A dog on the beach"
    assert found.written_by_person
    assert from_xmp(LIGHTROOM) is not None
    assert from_xmp(LIGHTROOM).model == PERSON_MODEL  # type: ignore[union-attr]


def test_a_merged_packet_keeps_every_other_property_and_replaces_only_the_caption() -> None:
    merged = merged_xmp(LIGHTROOM, record())
    text = merged.decode()

    found = read_xmp(merged)
    assert found.description == "a cat on a mat"
    assert not found.written_by_person
    assert found.provenance["Model"] == "blip"
    assert found.provenance["SHA256"] == DIGEST
    assert 'Rating="5"' in text
    assert "<rdf:li>beach</rdf:li>" in text
    assert "animals|dog" in text
    assert "A dog on the beach" not in text
    assert "Ein Hund" not in text
    assert "xmlns:lr=" in text  # the writer's prefixes are kept


def test_captioner_provenance_read_back_names_the_model_revision_prompt_and_settings() -> None:
    caption = from_xmp(merged_xmp(None, record()))

    assert caption is not None
    assert (caption.text, caption.model, caption.prompt) == ("a cat on a mat", "blip", "")
    assert caption.provenance == Provenance.of("rev1", {"max_new_tokens": 30, "prompt": ""})
    assert caption.sha256 == DIGEST
    assert caption.duration_ms == 812.5


def test_a_person_caption_written_by_captioner_reads_back_as_a_persons() -> None:
    packet = merged_xmp(None, record("my words", model=PERSON_MODEL))

    assert read_xmp(packet).written_by_person
    assert from_xmp(packet).model == PERSON_MODEL  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "hostile",
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>',
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>',
        b"<not-closed",
        b"<html><body>not xmp</body></html>",
    ],
)
def test_a_packet_with_entities_a_dtd_or_no_xmp_is_refused(hostile: bytes) -> None:
    with pytest.raises(UnreadableXmp):
        read_xmp(hostile)
    with pytest.raises(UnreadableXmp):
        merged_xmp(hostile, record())


def test_sidecars_are_named_as_immich_taggui_and_kohya_look_for_them() -> None:
    assert sidecar_name("photo.jpg", "xmp") == "photo.jpg.xmp"
    assert sidecar_name("photo.jpg", "xmp", "photo.xmp") == "photo.xmp"
    assert sidecar_name("photo.jpg", "txt") == "photo.txt"
    assert sidecar_name("photo.jpg", "caption") == "photo.caption"
    assert sidecar_name("my.photo.jpg", "json") == "my.photo.json"
