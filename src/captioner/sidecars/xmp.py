"""XMP sidecars: a caption and captioner's provenance read from an XMP packet, and merged
into one keeping every other field (ratings, tags, faces, edits other tools wrote).

Parsed with defusedxml: a packet with a DTD, entities or external references is refused,
so an untrusted sidecar cannot expand entities or make the parser read other files.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import defusedxml
import defusedxml.ElementTree as SafeET

from captioner.domain.model import PERSON_MODEL, ImageRecord

# captioner's own properties live in a namespace of their own, so other tools keep them and
# no standard property is given a meaning it does not have.
CAPTIONER_NS = "http://ns.captioner.app/xmp/1.0/"
_X = "adobe:ns:meta/"
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_DC = "http://purl.org/dc/elements/1.1/"
_TIFF = "http://ns.adobe.com/tiff/1.0/"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_PREFIXES = {"x": _X, "rdf": _RDF, "dc": _DC, "tiff": _TIFF, "captioner": CAPTIONER_NS}
# The properties a caption is written to; every other property of a merged packet stays.
_CAPTION_PROPERTIES = {f"{{{_DC}}}description", f"{{{_TIFF}}}ImageDescription"}
_PACKET_START = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_PACKET_END = '\n<?xpacket end="w"?>\n'


class UnreadableXmp(ValueError):
    """The bytes are not an XMP packet captioner reads safely (malformed, or with a DTD)."""


@dataclass(frozen=True)
class XmpCaption:
    """What an XMP packet says about an image's caption.

    ``provenance`` holds captioner's properties (Source, Model, Prompt, SHA256, ...) by name;
    empty when another tool wrote the description.
    """

    description: str | None
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def written_by_person(self) -> bool:
        """A description without captioner's model provenance: a person's (or another
        tool's on a person's behalf), never to be replaced."""
        return bool(self.description) and self.provenance.get("Source") != "model"


def read_xmp(data: bytes) -> XmpCaption:
    """The caption (``x-default``, else the first language) and captioner's provenance."""
    root = _parse(data)
    description: str | None = None
    fallback: str | None = None
    provenance: dict[str, str] = {}
    for node in root.iter(f"{{{_RDF}}}Description"):
        for name, value in node.attrib.items():
            if name.startswith(f"{{{CAPTIONER_NS}}}"):
                provenance[name.split("}", 1)[1]] = value
            elif name == f"{{{_DC}}}description" and description is None:
                description = value.strip() or None
        for child in node:
            if child.tag.startswith(f"{{{CAPTIONER_NS}}}"):
                provenance[child.tag.split("}", 1)[1]] = (child.text or "").strip()
            elif child.tag == f"{{{_DC}}}description" and description is None:
                description = _language_alternative(child)
            elif child.tag == f"{{{_TIFF}}}ImageDescription" and fallback is None:
                fallback = _language_alternative(child)
    return XmpCaption(description or fallback, provenance)


def merged_xmp(existing: bytes | None, record: ImageRecord) -> bytes:
    """``existing`` (a packet, or None for a new one) with ``record``'s caption and provenance
    in place of any earlier caption; every other property is kept as it was."""
    if existing is None:
        root = ET.Element(f"{{{_X}}}xmpmeta", {f"{{{_X}}}xmptk": "captioner"})
        ET.SubElement(root, f"{{{_RDF}}}RDF")
        prefixes = dict(_PREFIXES)
    else:
        root = _parse(existing)
        prefixes = {**_declared_prefixes(existing), **_PREFIXES}
        if root.tag == f"{{{_RDF}}}RDF":  # a bare rdf:RDF: wrap it as packets are
            wrapper = ET.Element(f"{{{_X}}}xmpmeta")
            wrapper.append(root)
            root = wrapper
    rdf = root.find(f"{{{_RDF}}}RDF")
    if rdf is None:
        rdf = ET.SubElement(root, f"{{{_RDF}}}RDF")
    about = ""
    for node in list(rdf.findall(f"{{{_RDF}}}Description")):
        about = node.get(f"{{{_RDF}}}about", about)
        _drop_caption(node)
        if len(node) == 0 and set(node.attrib) <= {f"{{{_RDF}}}about"}:
            rdf.remove(node)
    rdf.append(_caption_description(record, about))
    for prefix, uri in prefixes.items():
        try:
            ET.register_namespace(prefix, uri)
        except ValueError:  # ns0-style prefixes are ElementTree's own: it makes them up
            continue
    body = ET.tostring(root, encoding="unicode")
    return (_PACKET_START + body + _PACKET_END).encode("utf-8")


def _caption_description(record: ImageRecord, about: str) -> ET.Element:
    node = ET.Element(f"{{{_RDF}}}Description", {f"{{{_RDF}}}about": about})
    # Immich reads and writes both (docs.immich.app/features/xmp-sidecars): a stale
    # ImageDescription left beside a new description would keep the old words in play.
    for tag in (f"{{{_DC}}}description", f"{{{_TIFF}}}ImageDescription"):
        alternatives = ET.SubElement(ET.SubElement(node, tag), f"{{{_RDF}}}Alt")
        item = ET.SubElement(alternatives, f"{{{_RDF}}}li", {_XML_LANG: "x-default"})
        item.text = record.description
    for name, value in provenance_fields(record).items():
        ET.SubElement(node, f"{{{CAPTIONER_NS}}}{name}").text = value
    return node


def provenance_fields(record: ImageRecord) -> dict[str, str]:
    """captioner's XMP properties for a record: who wrote the caption, with what, when."""
    person = record.model == PERSON_MODEL
    fields = {
        "Source": "person" if person else "model",
        "Model": record.model,
        "ModelRevision": record.provenance.model_revision or "",
        "Prompt": record.prompt,
        "SHA256": record.sha256,
        "CaptionedAt": record.created_at.isoformat(),
        "Generation": json.dumps(record.provenance.settings, sort_keys=True),
    }
    if record.duration_ms is not None:
        fields["DurationMs"] = f"{record.duration_ms:g}"
    return fields


def _drop_caption(node: ET.Element) -> None:
    for child in list(node):
        if child.tag in _CAPTION_PROPERTIES or child.tag.startswith(f"{{{CAPTIONER_NS}}}"):
            node.remove(child)
    for name in list(node.attrib):
        if name in _CAPTION_PROPERTIES or name.startswith(f"{{{CAPTIONER_NS}}}"):
            del node.attrib[name]


def _language_alternative(element: ET.Element) -> str | None:
    """The x-default entry of an rdf:Alt (else its first), or the element's own text."""
    items = element.findall(f"./{{{_RDF}}}Alt/{{{_RDF}}}li")
    chosen = next((i for i in items if i.get(_XML_LANG) == "x-default"), None)
    if chosen is None and items:
        chosen = items[0]
    text = (chosen.text if chosen is not None else element.text) or ""
    return text.strip() or None


def _parse(data: bytes) -> ET.Element:
    try:
        root: ET.Element = SafeET.fromstring(data)
    except (ET.ParseError, defusedxml.DefusedXmlException) as error:
        raise UnreadableXmp(f"not a readable XMP packet: {error}") from None
    if root.tag not in (f"{{{_X}}}xmpmeta", f"{{{_RDF}}}RDF"):
        raise UnreadableXmp(f"not an XMP packet (its root is {root.tag})")
    return root


def _declared_prefixes(data: bytes) -> dict[str, str]:
    """The prefixes the packet's writer chose, so a merge writes them back the same way."""
    declared: dict[str, str] = {}
    for _, (prefix, uri) in SafeET.iterparse(io.BytesIO(data), events=("start-ns",)):
        if prefix:
            declared[prefix] = uri
    return declared
