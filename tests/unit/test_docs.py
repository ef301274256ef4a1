"""The README stays a five-minute read, its links and the docs' links lead somewhere, and every
`captioner` command and flag the pages show exists."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
import unicodedata
from pathlib import Path

import pytest

from captioner.entrypoints.cli import main
from captioner.entrypoints.serialize import ListedImageOut, UploadResult

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)


def links_of(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def anchor_of(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = unicodedata.normalize("NFKC", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {anchor_of(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_the_readme_is_a_five_minute_read() -> None:
    assert len(README.read_text().splitlines()) <= 250


def test_the_readme_links_every_docs_page_and_each_exists() -> None:
    linked = {
        (README.parent / target.split("#")[0]).resolve()
        for target in links_of(README)
        if target.startswith("docs/")
    }

    assert all(page.exists() for page in linked), sorted(map(str, linked))
    assert {page.resolve() for page in DOCS.glob("*.md")} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in links_of(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        to_heading = bool(anchor) and file.suffix == ".md"
        if not file.exists() or (to_heading and anchor not in anchors_of(file)):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def help_of(*words: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0, words
    return out.getvalue()


def subcommands_of(help_text: str) -> set[str]:
    positional = help_text.split("positional arguments:", 1)[-1].split("options:", 1)[0]
    return set(re.findall(r"^ {4}([a-z][\w-]*)", positional, re.M))


def documented_command_lines() -> list[tuple[Path, str]]:
    lines = []
    for page in PAGES:
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip().startswith("captioner "):
                    lines.append((page, line.strip()))
    return lines


def test_the_cli_page_names_every_command() -> None:
    text = (DOCS / "cli.md").read_text()
    commands = subcommands_of(help_of())
    grouped = {(c, s) for c in ("keys", "db") for s in subcommands_of(help_of(c))}

    assert {"serve", "caption", "recaption", "export", "list", "delete", "check", "config"} <= (
        commands
    )
    for command in commands:
        assert f"captioner {command}" in text, command
    for command, sub in grouped:
        assert f"captioner {command} {sub}" in text, (command, sub)


@pytest.mark.parametrize(
    ("page", "line"), documented_command_lines(), ids=lambda value: getattr(value, "name", value)
)
def test_every_documented_command_and_flag_exists(page: Path, line: str) -> None:
    words = shlex.split(line, comments=True)
    for stop in (">", "|", "&", ";"):
        if stop in words:
            words = words[: words.index(stop)]
    command = words[1:2]
    if len(words) > 2 and words[2] in subcommands_of(help_of(*command)):
        command = words[1:3]
    text = help_of(*command)
    flags = [word.split("=")[0] for word in words if word.startswith("--")]

    missing = [flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", text)]
    assert not missing, f"{page.name}: `{line}` uses {missing}, not in {command} --help"


def test_the_configuration_page_config_file_is_read_as_shown(tmp_path: Path) -> None:
    page = (DOCS / "configuration.md").read_text()
    example = re.findall(r"```toml\n(.*?)```", page, re.S)[0]
    (tmp_path / "captioner.toml").write_text(example)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["config", "--json", "--config", str(tmp_path / "captioner.toml")])

    shown = json.loads(out.getvalue())
    assert code == 0
    for name, value in tomllib.loads(example).items():
        assert shown[name] == value, name


def test_the_api_page_names_every_field_of_a_record() -> None:
    page = (DOCS / "api.md").read_text()
    records = page.split("\n## Records\n", 1)[1].split("\n## ", 1)[0]

    for field in {*UploadResult.model_fields, *ListedImageOut.model_fields}:
        assert f"`{field}`" in records, field
