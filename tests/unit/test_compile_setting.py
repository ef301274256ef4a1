"""CAPTIONER_COMPILE: the three modes, the default, and where inductor's cache lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.config import Settings


def test_compile_defaults_to_background_so_readiness_never_waits_for_it() -> None:
    assert Settings().compile == "background"


@pytest.mark.parametrize("mode", ["off", "background", "wait"])
def test_each_compile_mode_is_read_from_the_environment(mode: str) -> None:
    assert Settings.load(environ={"CAPTIONER_COMPILE": mode}).compile == mode


def test_an_unknown_compile_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="compile must be off, background or wait"):
        Settings.from_mapping({"compile": "sometimes"})


def test_the_compile_cache_lives_in_the_data_dir_so_it_survives_restarts(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).compile_cache_dir == tmp_path / "compile-cache"
