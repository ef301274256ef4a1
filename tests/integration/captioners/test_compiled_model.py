"""The compiled inference path (CAPTIONER_COMPILE): on a tiny BLIP the traced decoder step, on a
tiny PaliGemma inductor's vision tower, on ViT-GPT2 nothing; same captions as eager, no recompile
or retrace per batch size, eager service while it compiles, eager fallback when it cannot."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from captioner.adapters.captioners.transformers import GenerationSettings, TransformersCaptioner
from captioner.adapters.captioners.transformers.compiled import CompiledModel
from captioner.adapters.imaging.decoder import PillowImageDecoder
from captioner.domain.model import DecodedImage
from tests.conftest import png_bytes

# One real compile per mode; the second reuses inductor's cache from the first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GENERATION = GenerationSettings(max_new_tokens=8)


def images(count: int, offset: int = 0) -> list[tuple[DecodedImage, str]]:
    """Distinct images: a colour and a size per index."""
    decoder = PillowImageDecoder()
    return [
        (
            decoder.decode(
                io.BytesIO(png_bytes((37 * n % 256, 91 * n % 256, 53 * n % 256), (40 + n, 30 + n)))
            ),
            "",
        )
        for n in range(offset, offset + count)
    ]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile-cache")


def ready_captioner(model_dir: Path, mode: str, cache: Path | None = None) -> TransformersCaptioner:
    """A captioner of the model in ``mode``, ready (compiled, in wait mode)."""
    captioner = TransformersCaptioner(
        str(model_dir), generation=GENERATION, compile=mode, compile_cache_dir=cache
    )
    readiness = captioner.wait_until_ready(timeout=850)
    assert readiness.ready, readiness.reason
    return captioner


@pytest.fixture(scope="module")
def eager(tiny_blip_dir: Path) -> TransformersCaptioner:
    return ready_captioner(tiny_blip_dir, "off")


@pytest.fixture(scope="module")
def compiled(tiny_blip_dir: Path, compile_cache: Path) -> TransformersCaptioner:
    return ready_captioner(tiny_blip_dir, "wait", compile_cache)


def test_wait_mode_is_ready_only_with_blips_traced_step_active(
    compiled: TransformersCaptioner,
) -> None:
    assert compiled.compiled is not None
    assert compiled.compiled.active, compiled.compiled.failure
    # Inductor is left out for BLIP: its kernels round differently from the eager ones.
    assert compiled.compiled.parts == ["text_decoder step (TorchScript)"]
    assert compiled.compiled.seconds is not None
    assert compiled.compiled.seconds > 0
    assert compiled.greedy_decoder is not None
    assert compiled.greedy_decoder.traced_calls > 0  # the warm-up took the trace


@pytest.mark.parametrize("size", [1, 2, 3, 5, 9])
def test_compiled_captions_equal_eager_captions_at_every_batch_size(
    compiled: TransformersCaptioner, eager: TransformersCaptioner, size: int
) -> None:
    batch = images(size, offset=10 * size)
    decoder = compiled.greedy_decoder
    assert decoder is not None
    traced_before = decoder.traced_calls

    assert compiled.describe_batch(batch) == eager.describe_batch(batch)
    assert decoder.traced_calls == traced_before + 1  # one traced graph for every size


def test_background_mode_serves_eager_at_once_and_switches_when_warm(
    tiny_blip_dir: Path, compile_cache: Path, eager: TransformersCaptioner
) -> None:
    captioner = TransformersCaptioner(
        str(tiny_blip_dir),
        generation=GENERATION,
        compile="background",
        compile_cache_dir=compile_cache,
    )
    assert captioner.wait_until_ready(timeout=120).ready
    assert captioner.compiled is not None
    batch = images(3, offset=200)
    while_compiling = captioner.describe_batch(batch)  # ready before the compile is done

    assert captioner.compiled.wait(timeout=850)
    assert captioner.compiled.active, captioner.compiled.failure
    assert captioner.describe_batch(batch) == while_compiling == eager.describe_batch(batch)


def test_a_compile_that_fails_leaves_the_eager_model_serving(
    tiny_blip_dir: Path, tmp_path: Path, eager: TransformersCaptioner
) -> None:
    not_a_directory = tmp_path / "cache-is-a-file"
    not_a_directory.write_text("")
    captioner = TransformersCaptioner(
        str(tiny_blip_dir),
        generation=GENERATION,
        compile="wait",
        compile_cache_dir=not_a_directory,
    )

    assert captioner.wait_until_ready(timeout=120).ready
    assert captioner.compiled is not None
    assert not captioner.compiled.active
    assert captioner.compiled.failure is not None
    batch = images(2, offset=300)
    assert captioner.describe_batch(batch) == eager.describe_batch(batch)


# Before the PaliGemma tests: loading another model class after a compile changes a registry
# transformers' compiled wrapper is guarded on, which would recompile (one model per process in
# the service, so only tests meet it).
@pytest.mark.parametrize("model_dir", ["tiny_vit_gpt2_dir", "tiny_git_dir"])
def test_families_with_nothing_worth_compiling_compile_nothing_quietly(
    model_dir: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    # ViT-GPT2: its encoder compiled measured 0.99x of eager. GIT: no part inductor knows.
    captioner = ready_captioner(request.getfixturevalue(model_dir), "background")

    assert captioner.compiled is not None
    assert captioner.compiled.mode == "off"
    assert captioner.compiled.failure is None
    assert not captioner.compiled.active
    assert "compiled inference unavailable" not in caplog.text


@pytest.fixture(scope="module")
def eager_paligemma(tiny_paligemma_dir: Path) -> TransformersCaptioner:
    return ready_captioner(tiny_paligemma_dir, "off")


@pytest.fixture(scope="module")
def compiled_paligemma(tiny_paligemma_dir: Path, compile_cache: Path) -> TransformersCaptioner:
    return ready_captioner(tiny_paligemma_dir, "wait", compile_cache)


def test_vision_towers_compile_with_inductor(
    compiled_paligemma: TransformersCaptioner, compile_cache: Path
) -> None:
    assert compiled_paligemma.compiled is not None
    assert compiled_paligemma.compiled.active, compiled_paligemma.compiled.failure
    assert compiled_paligemma.compiled.parts == ["model.vision_tower"]
    assert any(compile_cache.iterdir())  # inductor wrote its artifacts where it was told


def test_inductors_encoder_runs_new_batch_sizes_without_a_recompile(
    compiled_paligemma: TransformersCaptioner, eager_paligemma: TransformersCaptioner
) -> None:
    import torch

    # The warm-up compiled the vision tower's batch-1 graph; every batch runs one image at a
    # time through it.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for size in (1, 3, 8, 9):
            batch = images(size, offset=100 + size)
            assert compiled_paligemma.describe_batch(batch) == eager_paligemma.describe_batch(batch)


class _Model:
    """A stand-in torch model with one part the compiler knows: a vision_model."""

    def __init__(self) -> None:
        import torch

        self.vision_model = torch.nn.Identity()


def _tagging_compiler(
    release: threading.Event,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A compiler whose "compiled" code answers ("compiled", x) once ``release`` is set."""

    def compiler(function: Callable[..., Any]) -> Callable[..., Any]:
        def compiled(*args: Any) -> Any:
            release.wait(timeout=30)
            return ("compiled", function(*args))

        return compiled

    return compiler


@pytest.fixture
def switch() -> Iterator[tuple[_Model, CompiledModel, threading.Event, list[object]]]:
    model = _Model()
    release = threading.Event()
    seen_while_warming: list[object] = []
    compiled = CompiledModel(
        model,
        "background",
        warm=lambda: seen_while_warming.append(model.vision_model(1)),
        compiler=_tagging_compiler(release),
    )
    yield model, compiled, release, seen_while_warming
    release.set()


def test_only_the_warming_thread_sees_compiled_code_until_it_is_warm(
    switch: tuple[_Model, CompiledModel, threading.Event, list[object]],
) -> None:
    model, compiled, release, seen_while_warming = switch
    compiled.start()

    assert model.vision_model(7) == 7  # other threads: eager, while the warm-up is stuck
    assert not compiled.active
    release.set()
    assert compiled.wait(timeout=30)
    assert compiled.active
    assert seen_while_warming == [("compiled", 1)]
    assert model.vision_model(7) == ("compiled", 7)


def test_closing_waits_out_a_compile_under_way(
    switch: tuple[_Model, CompiledModel, threading.Event, list[object]],
) -> None:
    # A thread left inside torch when the interpreter finalises aborts the process, so close
    # (run at exit too) must not return while the compile runs.
    _, compiled, release, _ = switch
    compiled.start()
    closer = threading.Thread(target=compiled.close)
    closer.start()

    closer.join(timeout=0.3)
    still_waiting = closer.is_alive()
    release.set()
    closer.join(timeout=30)

    assert still_waiting
    assert not closer.is_alive()
    assert compiled.active  # it finished what it had begun


def test_a_compile_is_never_begun_after_close(
    switch: tuple[_Model, CompiledModel, threading.Event, list[object]],
) -> None:
    model, compiled, release, _ = switch
    release.set()
    compiled.close()

    compiled.start()

    assert compiled.wait(timeout=0)
    assert not compiled.compile_now()
    assert not compiled.active
    assert model.vision_model(7) == 7


def test_off_mode_never_compiles(
    switch: tuple[_Model, CompiledModel, threading.Event, list[object]],
) -> None:
    model, _, release, _ = switch
    release.set()
    compiled = CompiledModel(model, "off", warm=lambda: None, compiler=_tagging_compiler(release))

    compiled.start()

    assert compiled.wait(timeout=0)
    assert not compiled.active
    assert model.vision_model(7) == 7


def test_one_image_at_a_time_calls_each_image_alone_and_rebuilds_the_batch() -> None:
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from captioner.adapters.captioners.transformers.one_image import one_image_at_a_time

    seen: list[int] = []

    def encoder(pixel_values: Any, scale: float = 1.0) -> Any:
        seen.append(int(pixel_values.shape[0]))
        hidden = pixel_values.flatten(1) * scale
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=hidden.sum(1))

    pixels = torch.arange(24.0).view(4, 2, 3)
    whole: Any = encoder(pixels, scale=2.0)
    seen.clear()

    parts: Any = one_image_at_a_time(encoder, (pixels,), {"scale": 2.0})

    assert seen == [1, 1, 1, 1]
    assert torch.equal(parts.last_hidden_state, whole.last_hidden_state)
    assert torch.equal(parts.pooler_output, whole.pooler_output)
    assert parts.hidden_states is None
    assert type(parts) is BaseModelOutputWithPooling


def test_images_begun_while_their_batch_gathers_are_not_encoded_again(
    eager: TransformersCaptioner, tiny_blip_dir: Path
) -> None:
    batch = images(3, offset=400)
    expected = ready_captioner(tiny_blip_dir, "off").describe_batch(batch)
    ahead = eager.encoded_ahead
    assert ahead is not None
    used_before = ahead.used

    for image, prompt in batch:
        eager.begin(image, prompt)
    captions = eager.describe_batch(batch)

    assert captions == expected
    assert ahead.used == used_before + 3


def test_what_a_batch_left_encoded_ahead_is_dropped_with_it(eager: TransformersCaptioner) -> None:
    ahead = eager.encoded_ahead
    assert ahead is not None
    begun, described = images(2, offset=500)
    eager.begin(*begun)  # its request gave up before its batch ran
    eager.describe_batch([described])
    used_before = ahead.used

    eager.describe_batch([begun])  # the same image again, later: encoded afresh

    assert ahead.used == used_before


def test_an_output_encoded_ahead_serves_only_the_same_pixels_and_settings_once() -> None:
    import torch

    from captioner.adapters.captioners.transformers.one_image import EncodedAhead

    calls: list[int] = []

    def encoder(pixel_values: Any, scale: float = 1.0) -> Any:
        calls.append(int(pixel_values.shape[0]))
        return pixel_values * scale

    pixels = torch.arange(6.0).view(1, 2, 3)
    ahead = EncodedAhead(encoder)
    ahead.encode(pixels.clone(), scale=2.0)

    assert ahead.take((), {"pixel_values": pixels + 1, "scale": 2.0}) is None
    assert ahead.take((), {"pixel_values": pixels, "scale": 3.0}) is None
    assert ahead.take((pixels,), {"scale": 2.0}) is None  # positional: not the call it knows
    taken = ahead.take((), {"pixel_values": pixels, "scale": 2.0})
    assert taken is not None
    assert torch.equal(taken, pixels * 2.0)
    assert ahead.take((), {"pixel_values": pixels, "scale": 2.0}) is None  # used up
    assert ahead.used == 1
    assert calls == [1]
