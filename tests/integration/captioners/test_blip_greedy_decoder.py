"""BLIP's greedy decoder gives transformers' tokens: every setting it takes, plain and prompted,
at several batch sizes; everything else goes to transformers' generate."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from captioner.adapters.captioners.transformers.blip_greedy import GreedyBlipDecoder
from tests.conftest import png_bytes

pytestmark = pytest.mark.slow


def loaded_blip(directory: Path) -> Iterator[tuple[Any, Any, GreedyBlipDecoder]]:
    """The saved model, its processor, and a greedy decoder for it (uninstalled after)."""
    import torch
    from transformers import AutoProcessor, BlipForConditionalGeneration

    processor: Any = AutoProcessor.from_pretrained(directory)  # type: ignore[no-untyped-call]
    model: Any = BlipForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    decoder = GreedyBlipDecoder(model.text_decoder)
    yield model, processor, decoder
    decoder.uninstall()


@pytest.fixture(scope="module")
def blip(tiny_blip_dir: Path) -> Iterator[tuple[Any, Any, GreedyBlipDecoder]]:
    yield from loaded_blip(tiny_blip_dir)


def photos(count: int) -> list[Any]:
    from PIL import Image

    return [
        Image.open(
            io.BytesIO(png_bytes((37 * n % 256, 91 * n % 256, 53 * n % 256), (40 + n, 30 + n)))
        ).convert("RGB")
        for n in range(count)
    ]


def generate(
    blip: tuple[Any, Any, GreedyBlipDecoder], greedy: bool, prompt: str, size: int, **settings: Any
) -> list[list[int]]:
    import torch

    model, processor, decoder = blip
    (decoder.install if greedy else decoder.uninstall)()
    inputs = processor(
        images=photos(size), text=[prompt] * size if prompt else None, return_tensors="pt"
    )
    with torch.inference_mode():
        output = model.generate(**inputs, **settings)
    decoder.uninstall()
    return [list(map(int, row)) for row in output]


SETTINGS: list[dict[str, Any]] = [
    {"max_new_tokens": 12},
    {"max_new_tokens": 12, "repetition_penalty": 1.5},
    {"max_new_tokens": 12, "no_repeat_ngram_size": 2},
    {"max_new_tokens": 12, "min_new_tokens": 10},
    {"max_length": 9},
]


@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items())
)
@pytest.mark.parametrize("prompt", ["", "a picture of"])
@pytest.mark.parametrize("size", [1, 3, 8])
def test_greedy_tokens_equal_transformers_tokens(
    blip: tuple[Any, Any, GreedyBlipDecoder], settings: dict[str, Any], prompt: str, size: int
) -> None:
    calls_before = blip[2].greedy_calls

    ours = generate(blip, True, prompt, size, **settings)

    assert blip[2].greedy_calls == calls_before + 1  # the greedy loop answered, not transformers
    assert ours == generate(blip, False, prompt, size, **settings)


def test_captions_depend_on_the_image(blip: tuple[Any, Any, GreedyBlipDecoder]) -> None:
    # Otherwise equal captions would prove nothing about the image path.
    assert len({tuple(row) for row in generate(blip, True, "", 8, max_new_tokens=12)}) >= 6


@pytest.mark.parametrize(
    "settings",
    [{"max_new_tokens": 6, "num_beams": 2}, {"max_new_tokens": 6, "do_sample": True, "top_k": 1}],
    ids=["beams", "sampling"],
)
def test_other_searches_go_to_transformers(
    blip: tuple[Any, Any, GreedyBlipDecoder], settings: dict[str, Any]
) -> None:
    calls_before = blip[2].greedy_calls

    ours = generate(blip, True, "", 2, **settings)

    assert blip[2].greedy_calls == calls_before
    if not settings.get("do_sample"):
        assert ours == generate(blip, False, "", 2, **settings)


@pytest.mark.parametrize("prompt", ["", "a picture of"])
def test_the_traced_step_gives_the_eager_tokens(
    blip: tuple[Any, Any, GreedyBlipDecoder], prompt: str
) -> None:
    decoder = blip[2]
    sizes = (1, 3, 8)  # traced once, at the first of them: the graph serves every batch size
    eager = {size: generate(blip, True, prompt, size, max_new_tokens=10) for size in sizes}
    decoder.compile(lambda: True)
    try:
        traced_before = decoder.traced_calls
        for size in sizes:
            assert generate(blip, True, prompt, size, max_new_tokens=10) == eager[size]
        assert decoder.traced_calls == traced_before + len(sizes)
    finally:
        decoder.compile(lambda: False)


def test_a_trace_that_changes_the_numbers_is_not_used(
    blip: tuple[Any, Any, GreedyBlipDecoder],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import torch

    model, processor, _ = blip
    real_trace: Any = torch.jit.trace

    def off_by_a_rounding(step: Any, inputs: Any, **options: Any) -> Any:
        graph = real_trace(step, inputs, **options)

        def run(*args: Any) -> Any:
            scores, keys, values = graph(*args)
            return scores + 1e-6, keys, values

        return run

    eager = generate(blip, True, "", 3, max_new_tokens=10)
    monkeypatch.setattr(torch.jit, "trace", off_by_a_rounding)
    decoder = GreedyBlipDecoder(model.text_decoder)
    decoder.compile(lambda: True)

    ours = generate((model, processor, decoder), True, "", 3, max_new_tokens=10)

    assert ours == eager
    assert decoder.greedy_calls == 1
    assert decoder.traced_calls == 0
    assert "staying with the eager step" in caplog.text


def test_a_caption_longer_than_the_positions_fails_as_in_transformers(
    blip: tuple[Any, Any, GreedyBlipDecoder],
) -> None:
    positions = int(blip[0].config.text_config.max_position_embeddings)
    calls_before = blip[2].greedy_calls

    with pytest.raises(IndexError):
        generate(blip, True, "", 1, max_new_tokens=positions + 5)

    assert blip[2].greedy_calls == calls_before


def test_the_eager_service_path_gives_transformers_captions(tiny_blip_dir: Path) -> None:
    import torch
    from transformers import pipeline

    from captioner.adapters.captioners.transformers import GenerationSettings, TransformersCaptioner
    from captioner.adapters.captioners.transformers.processed_ahead import picture_of
    from captioner.adapters.imaging.decoder import PillowImageDecoder
    from captioner.domain.caption_text import clean_caption

    settings = GenerationSettings(max_new_tokens=12)
    captioner = TransformersCaptioner(str(tiny_blip_dir), generation=settings, compile="off")
    assert captioner.wait_until_ready(timeout=120).ready
    decoder = PillowImageDecoder()
    images = [
        captioner.prepare(
            decoder.decode(io.BytesIO(png_bytes((29 * n % 256, 71 * n, 9), (50, 40 + n))))
        )
        for n in range(6)
    ]
    transformers_pipe: Any = pipeline("image-text-to-text", model=str(tiny_blip_dir))

    for prompt in ("", "a picture of"):
        with torch.inference_mode():
            outputs = transformers_pipe(
                images=[picture_of(image.pixels) for image in images],
                text=[prompt] * len(images),
                batch_size=len(images),
                generate_kwargs=settings.as_kwargs(),
            )
        texts = [(out[0] if isinstance(out, list) else out)["generated_text"] for out in outputs]
        expected = [clean_caption(text.strip(), "") for text in texts]
        assert captioner.describe_batch([(image, prompt) for image in images]) == expected
    assert captioner.greedy_decoder is not None
    assert captioner.greedy_decoder.greedy_calls == 2  # the greedy loop answered both batches


@pytest.fixture(scope="module")
def wide_blip(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, Any, GreedyBlipDecoder]]:
    """A BLIP whose image embeddings are wider than its text decoder, as in BLIP-large."""
    from tests.support.models import build_blip

    yield from loaded_blip(
        build_blip(tmp_path_factory.mktemp("models") / "wide-blip", vision_width=48)
    )


@pytest.mark.parametrize("compiled", [False, True], ids=["eager-step", "traced-step"])
@pytest.mark.parametrize("prompt", ["", "a picture of"])
def test_image_embeddings_wider_than_the_decoder_give_transformers_tokens(
    wide_blip: tuple[Any, Any, GreedyBlipDecoder], compiled: bool, prompt: str
) -> None:
    decoder = wide_blip[2]
    decoder.compile(lambda: compiled)
    try:
        for size in (1, 3):
            calls_before = decoder.greedy_calls

            ours = generate(wide_blip, True, prompt, size, max_new_tokens=10)

            assert decoder.greedy_calls == calls_before + 1
            assert ours == generate(wide_blip, False, prompt, size, max_new_tokens=10)
    finally:
        decoder.compile(lambda: False)
