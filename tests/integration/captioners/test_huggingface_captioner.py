"""TransformersCaptioner on tiny random-weight models, loaded offline like production does."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from captioner.adapters.captioners.batching import BatchingCaptioner
from captioner.adapters.captioners.transformers import GenerationSettings, TransformersCaptioner
from captioner.adapters.captioners.transformers.processed_ahead import picture_of
from captioner.adapters.captioners.transformers.revision import looks_like_a_path, model_revision
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
    assert picture_of(prepared.pixels).size == (32, 32)


def _resized_only(captioner: TransformersCaptioner, image: DecodedImage) -> DecodedImage:
    """The image as prepare made it before the processor moved to the caller's thread."""
    return replace(image, pixels=picture_of(captioner.prepare(image).pixels))


@pytest.mark.parametrize("family", ["tiny_blip_dir", "tiny_vit_gpt2_dir"])
def test_images_processed_on_the_callers_thread_get_the_same_captions(
    family: str, request: pytest.FixtureRequest
) -> None:
    captioner = loaded(request.getfixturevalue(family))
    images = [decoded((40 * i, 200 - 30 * i, 90), (640, 480)) for i in range(4)]
    ahead = captioner.processed_ahead
    assert ahead is not None

    before = captioner.describe_batch([(_resized_only(captioner, i), "") for i in images])
    used = ahead.used
    after = captioner.describe_batch([(captioner.prepare(i), "") for i in images])

    assert after == before
    assert ahead.used == used + 1  # the model's call took what prepare computed


class _ThreadsOf:
    """An image processor that notes which thread called it."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        self.threads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        return self._processor(*args, **kwargs)


def test_the_model_thread_runs_no_image_processing(tiny_blip_dir: Path) -> None:
    captioner = loaded(tiny_blip_dir)
    ahead = captioner.processed_ahead
    assert ahead is not None
    images = [decoded((30 * i, 90, 200 - 30 * i), (640, 480)) for i in range(6)]
    expected = [captioner.describe(image, "").text for image in images]
    recorder = _ThreadsOf(ahead.processor)
    ahead.processor = recorder
    batcher = BatchingCaptioner(inner=captioner, max_batch=4, max_wait_ms=50)
    try:
        with ThreadPoolExecutor(6, thread_name_prefix="request") as pool:
            texts = list(pool.map(lambda image: batcher.describe(image, "").text, images))
    finally:
        batcher.close()

    assert texts == expected
    assert len(recorder.threads) == len(images)  # once per image: no second pass on the model
    assert all(name.startswith("request") for name in recorder.threads)


def test_a_model_that_cannot_be_loaded_says_why_and_refuses_captions(tmp_path: Path) -> None:
    captioner = TransformersCaptioner(str(tmp_path / "no-such-model"))
    readiness = captioner.wait_until_ready(timeout=60)

    assert not readiness.ready
    assert readiness.permanent
    assert "no-such-model" in readiness.reason
    with pytest.raises(CaptionerUnavailable, match="could not be loaded") as refused:
        captioner.describe(decoded(), "")
    assert refused.value.retry_after_s is None  # a restart with another setting is needed
    assert "CAPTIONER_MODEL" in str(refused.value)
    assert "restart" in str(refused.value)


def test_a_model_still_loading_is_a_transient_refusal(tiny_blip_dir: Path) -> None:
    captioner = TransformersCaptioner(str(tiny_blip_dir), load_now=False)

    readiness = captioner.readiness()
    with pytest.raises(CaptionerUnavailable, match="still loading") as refused:
        captioner.describe(decoded(), "")

    assert not readiness.ready
    assert not readiness.permanent
    assert refused.value.retry_after_s is not None
    captioner.close()


def test_an_unknown_hub_id_offline_says_it_is_not_in_the_cache_without_the_network() -> None:
    captioner = TransformersCaptioner("captioner-tests/does-not-exist")
    readiness = captioner.wait_until_ready(timeout=60)
    assert not readiness.ready
    assert readiness.permanent
    assert (
        "captioner-tests/does-not-exist is not in this machine's Hugging Face cache, and "
        "HF_HUB_OFFLINE is set" in readiness.reason
    )
    # Not the hub's advice to set what is already set.
    assert "set HF_HUB_OFFLINE=1" not in readiness.reason


def test_a_mistyped_local_model_directory_is_named_with_what_is_there(
    tmp_path: Path, tiny_blip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "blip-base").symlink_to(tiny_blip_dir)
    monkeypatch.chdir(tmp_path)  # a relative setting, as the docs' examples are run

    readiness = TransformersCaptioner("models/blip-bse").wait_until_ready(timeout=60)

    assert not readiness.ready
    assert readiness.permanent
    assert f"no such model directory: {tmp_path / 'models' / 'blip-bse'}" in readiness.reason
    assert "(models/ has: blip-base)" in readiness.reason
    assert "HF_HUB_OFFLINE" not in readiness.reason


@pytest.mark.parametrize(
    ("setting", "is_path"),
    [
        ("./blip", True),
        ("/srv/models/blip", True),
        ("~/models/blip", True),
        ("blip-base/", True),
        ("models/blip-bse", True),  # models/ exists here
        ("Salesforce/blip-image-captioning-base", False),
        ("blip-base", False),
    ],
)
def test_a_model_setting_looks_like_a_path_by_its_spelling_or_its_first_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, is_path: bool
) -> None:
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)

    assert looks_like_a_path(setting) is is_path


def test_loading_and_compiling_a_tiny_model_prints_no_loss_type_warning(
    tiny_blip_dir: Path,
) -> None:
    script = textwrap.dedent(
        f"""
        from captioner.adapters.captioners.transformers import TransformersCaptioner

        captioner = TransformersCaptioner({str(tiny_blip_dir)!r}, compile="wait")
        assert captioner.wait_until_ready(timeout=120).ready
        assert captioner.compiled is not None and captioner.compiled.active
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )

    assert result.returncode == 0, result.stderr
    assert "loss_type" not in result.stderr, result.stderr


ONE_LINE_PER_EVENT = textwrap.dedent(
    """
    import logging

    from captioner.adapters.captioners.transformers import TransformersCaptioner
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
