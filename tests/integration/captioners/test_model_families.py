"""Every model family of docs/models.md's table, as a tiny random-weight model, through the
production path: plain and prompted captions, mixed batches, no template scaffolding, and
the CLI, the HTTP API and the library."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest

from captioner.adapters.captioners.transformers import GenerationSettings, TransformersCaptioner
from captioner.adapters.captioners.transformers.processed_ahead import PreparedImage
from captioner.adapters.imaging.decoder import PillowImageDecoder
from captioner.domain.model import DecodedImage
from tests.conftest import png_bytes

pytestmark = pytest.mark.slow

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# family -> a prompt people give it (docs/models.md's examples)
PROMPTS = {
    "git": "a photo of",
    "florence2": "<DETAILED_CAPTION>",
    "paligemma": "caption en",
    "idefics3": "What colour is this image?",
    "smolvlm": "What colour is this image?",
    "qwen2_vl": "What colour is this image?",
}
IN_ANY_VENV = ["git", "florence2", "paligemma", "idefics3"]
NEED_TORCHVISION = ["smolvlm", "qwen2_vl"]
# Template and task scaffolding the tiny models' prompts are made of; captions have none.
SCAFFOLDING = ("<", ">", "User", "Assistant", "assistant", "Describe", "What", "caption en")


def decoded(color: tuple[int, int, int] = (200, 30, 30)) -> DecodedImage:
    return PillowImageDecoder().decode(io.BytesIO(png_bytes(color)))


def model_dir(family: str, request: pytest.FixtureRequest) -> Path:
    directory: Path = request.getfixturevalue(f"tiny_{family}_dir")
    return directory


def loaded(directory: Path) -> TransformersCaptioner:
    captioner = TransformersCaptioner(
        str(directory), generation=GenerationSettings(max_new_tokens=6)
    )
    readiness = captioner.wait_until_ready(timeout=180)
    assert readiness.ready, readiness.reason
    return captioner


def assert_clean(caption: str) -> None:
    assert caption.strip()
    for scaffolding in SCAFFOLDING:
        assert scaffolding not in caption


def runnable_families() -> list[str]:
    return IN_ANY_VENV + (NEED_TORCHVISION if HAS_TORCHVISION else [])


@pytest.mark.parametrize("family", runnable_families())
def test_plain_and_prompted_captions_hold_only_the_answer(
    family: str, request: pytest.FixtureRequest
) -> None:
    captioner = loaded(model_dir(family, request))

    plain = captioner.describe(decoded(), "").text
    prompted = captioner.describe(decoded(), PROMPTS[family]).text

    assert_clean(plain)
    if family == "git":  # GIT continues its prompt
        assert prompted.startswith("a photo of")
        assert_clean(prompted.removeprefix("a photo of"))
    else:
        assert_clean(prompted)
    assert captioner.describe(decoded(), "").text == plain  # deterministic


@pytest.mark.parametrize("family", runnable_families())
def test_a_batch_of_mixed_prompts_gives_each_image_its_own_caption(
    family: str, request: pytest.FixtureRequest
) -> None:
    captioner = loaded(model_dir(family, request))
    red, blue = decoded((200, 0, 0)), decoded((0, 0, 200))
    pairs = [(red, ""), (blue, PROMPTS[family]), (blue, "")]

    alone = [captioner.describe(image, prompt).text for image, prompt in pairs]
    together = captioner.describe_batch([(captioner.prepare(i), p) for i, p in pairs])

    assert together == alone


@pytest.mark.parametrize("family", runnable_families())
def test_processing_images_on_the_callers_thread_changes_no_caption(
    family: str, request: pytest.FixtureRequest
) -> None:
    captioner = loaded(model_dir(family, request))
    images = [decoded((60 * n, 90, 200 - 60 * n)) for n in range(3)]
    ahead = captioner.processed_ahead

    for _ in range(2):  # the second round after a family declined outputs computed ahead
        prepared = [captioner.prepare(image) for image in images]
        assert captioner.describe_batch([(image, "") for image in prepared]) == (
            captioner.describe_batch([(image, "") for image in images])
        )

    if ahead is not None:
        # Either the model's processor call took them, or callers stopped computing them.
        assert ahead.used > 0 or ahead.declined
        if ahead.declined:
            assert not isinstance(captioner.prepare(images[0]).pixels, PreparedImage)


@pytest.mark.parametrize("family", runnable_families())
def test_each_family_captions_through_the_cli_the_api_and_the_library(
    family: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import captioner
    from captioner.config import Settings
    from captioner.container import build_container
    from captioner.entrypoints.cli import main
    from captioner.entrypoints.http import create_app

    directory = str(model_dir(family, request))
    photo = tmp_path / "red.png"
    photo.write_bytes(png_bytes())

    code = main(
        ["caption", "--json", "--model", directory, "--data-dir", str(tmp_path / "cli"), str(photo)]
    )
    cli = json.loads(capsys.readouterr().out.splitlines()[-1])["description"]
    settings = Settings(model=directory, data_dir=tmp_path / "api")
    container = build_container(settings)
    client = create_app(container).test_client()
    assert container.service().wait_until_ready(timeout=180).ready
    api = client.post("/upload", data={"image": (io.BytesIO(png_bytes()), "red.png")})
    with captioner.open_service(model=directory, data_dir=tmp_path / "lib") as service:
        service.wait_until_ready(timeout=180)
        upload = captioner.ImageUpload(content=io.BytesIO(png_bytes()), original_name="red.png")
        library = service.describe(upload).record.description

    assert code == 0
    assert api.status_code == 200
    assert cli == api.get_json()["description"] == library
    assert_clean(library)


@pytest.mark.parametrize("family", NEED_TORCHVISION)
def test_families_that_need_torchvision_name_the_extra_when_it_is_missing(
    family: str, request: pytest.FixtureRequest
) -> None:
    captioner = TransformersCaptioner(str(model_dir(family, request)))
    readiness = captioner.wait_until_ready(timeout=180)

    if HAS_TORCHVISION:
        assert readiness.ready, readiness.reason
    else:
        assert not readiness.ready
        assert "torchvision" in readiness.reason
        assert "captioner[vlm]" in readiness.reason
