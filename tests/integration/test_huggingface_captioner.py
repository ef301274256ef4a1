"""TransformersCaptioner on tiny random-weight models, loaded offline like production does."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from captioner.adapters.captioners.transformers.captioner import (
    GenerationSettings,
    TransformersCaptioner,
    model_revision,
)
from captioner.adapters.imaging.decoder import PillowImageDecoder
from captioner.domain.errors import CaptionerUnavailable
from captioner.domain.model import DecodedImage
from tests.conftest import png_bytes

pytestmark = pytest.mark.slow


def decoded(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)
) -> DecodedImage:
    return PillowImageDecoder().decode(io.BytesIO(png_bytes(color, size)))


def loaded(model_dir: Path) -> TransformersCaptioner:
    return loaded_model(str(model_dir))


def loaded_model(model: str) -> TransformersCaptioner:
    captioner = TransformersCaptioner(model, generation=GenerationSettings(max_new_tokens=6))
    readiness = captioner.wait_until_ready(timeout=120)
    assert readiness.ready, readiness.reason
    return captioner


@pytest.mark.parametrize("family", ["tiny_blip_dir", "tiny_vit_gpt2_dir"])
def test_both_model_families_caption_through_the_production_path(
    family: str, request: pytest.FixtureRequest
) -> None:
    captioner = loaded(request.getfixturevalue(family))

    caption = captioner.describe(decoded(), "")

    # Random weights may loop ("dog dog dog ..."): the loop is cut, one copy stays.
    assert caption.text.strip()
    assert len(caption.text.split()) <= 6
    assert caption.duration_ms > 0
    assert captioner.describe(decoded(), "").text == caption.text  # deterministic


@pytest.mark.parametrize("family", ["tiny_blip_dir", "tiny_vit_gpt2_dir"])
def test_batches_of_different_sizes_and_prompts_give_each_image_its_own_caption(
    family: str, request: pytest.FixtureRequest
) -> None:
    captioner = loaded(request.getfixturevalue(family))
    small, big = decoded((10, 200, 10), (20, 30)), decoded((10, 10, 200), (640, 480))

    alone = [captioner.describe(small, "").text, captioner.describe(big, "").text]
    together = captioner.describe_batch(
        [(captioner.prepare(small), ""), (captioner.prepare(big), ""), (small, "a")]
    )

    assert together[:2] == alone
    assert together[2].startswith("a")


def test_a_local_model_reports_a_content_hash_revision_and_its_settings(
    tiny_blip_dir: Path, tmp_path: Path
) -> None:
    import shutil

    captioner = loaded(tiny_blip_dir)
    revision = captioner.provenance.model_revision
    copy = Path(shutil.copytree(tiny_blip_dir, tmp_path / "copy"))
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")

    assert revision is not None
    assert revision.startswith("sha256:")
    assert model_revision(str(tiny_blip_dir)) == revision  # same files, same revision
    assert model_revision(str(copy)) != revision  # any change to the files shows
    assert captioner.provenance.settings == {"max_new_tokens": 6, "num_beams": 1}


def test_a_hub_model_reports_the_commit_of_its_cached_snapshot(tiny_blip_dir: Path) -> None:
    import os
    import shutil

    # The hub cache's layout, as a download leaves it: refs/main names the snapshot's commit.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repository = Path(os.environ["HF_HOME"]) / "hub" / "models--captioner-tests--tiny-blip"
    shutil.copytree(tiny_blip_dir, repository / "snapshots" / commit, dirs_exist_ok=True)
    (repository / "refs").mkdir(exist_ok=True)
    (repository / "refs" / "main").write_text(commit)

    captioner = loaded_model("captioner-tests/tiny-blip")

    assert captioner.provenance.model_revision == commit


def test_a_prompt_starts_the_caption(tiny_blip_dir: Path) -> None:
    captioner = loaded(tiny_blip_dir)
    assert captioner.describe(decoded(), "a photo of").text.startswith("a photo of")


def test_prepare_shrinks_big_images_to_the_model_input_size(tiny_blip_dir: Path) -> None:
    captioner = loaded(tiny_blip_dir)
    prepared = captioner.prepare(decoded(size=(640, 480)))
    assert prepared.pixels.size == (32, 32)  # type: ignore[attr-defined]


def test_a_model_that_cannot_be_loaded_says_why_and_refuses_captions(tmp_path: Path) -> None:
    captioner = TransformersCaptioner(str(tmp_path / "no-such-model"))
    readiness = captioner.wait_until_ready(timeout=60)

    assert not readiness.ready
    assert "no-such-model" in readiness.reason
    with pytest.raises(CaptionerUnavailable, match="could not be loaded"):
        captioner.describe(decoded(), "")


def test_an_unknown_hub_id_fails_offline_without_touching_the_network() -> None:
    captioner = TransformersCaptioner("captioner-tests/does-not-exist")
    readiness = captioner.wait_until_ready(timeout=60)
    assert not readiness.ready
    assert "does-not-exist" in readiness.reason
    assert "set HF_HUB_OFFLINE=1 and CAPTIONER_MODEL to a local model directory" in (
        readiness.reason
    )


ONE_LINE_PER_EVENT = textwrap.dedent(
    """
    import logging

    from captioner.adapters.captioners.transformers.captioner import TransformersCaptioner
    from captioner.entrypoints.logs import configure_logging

    configure_logging()
    TransformersCaptioner("captioner-tests/does-not-exist").wait_until_ready(timeout=60)
    # What huggingface_hub and transformers say while the hub cannot be reached.
    logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
    logging.getLogger("transformers.modeling_utils").warning("a transformers warning")
    """
)


def test_each_warning_of_the_model_libraries_is_logged_once() -> None:
    result = subprocess.run(
        [sys.executable, "-c", ONE_LINE_PER_EVENT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Retrying in 1s [Retry 1/5].") == 1, result.stderr
    assert result.stderr.count("a transformers warning") == 1, result.stderr
    assert "WARNING huggingface_hub.utils._http: Retrying" in result.stderr


def test_a_model_that_fails_its_warm_up_serves_no_captions(tiny_blip_dir: Path) -> None:
    # Loads fine, but generate refuses these settings: the warm-up caption fails.
    captioner = TransformersCaptioner(
        str(tiny_blip_dir), generation=GenerationSettings(max_new_tokens=0)
    )
    readiness = captioner.wait_until_ready(timeout=120)

    assert not readiness.ready
    with pytest.raises(CaptionerUnavailable):
        captioner.describe(decoded(), "")
