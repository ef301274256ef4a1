"""What is sped up, for which family: the one place that decides the fast model path (the
compile switch is compiled.py; the eager helpers it wires are one_image.py and blip_greedy.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captioner.adapters.captioners.transformers import blip_greedy, compiled, malloc
from captioner.adapters.captioners.transformers.families import Family
from captioner.adapters.captioners.transformers.one_image import (
    EncodedAhead,
    run_one_image_at_a_time,
)


@dataclass(frozen=True)
class FastPath:
    """What was installed on a family's model: the compile switch (mode ``off`` when nothing
    compiles), and for BLIP the greedy decoder and where its images are encoded ahead."""

    compiled: compiled.CompiledModel
    greedy_decoder: blip_greedy.GreedyBlipDecoder | None = None
    encoded_ahead: EncodedAhead | None = None


def before_loading(device: str) -> None:
    """Process-wide settings the model's device wants before its weights are allocated."""
    if device == "cpu":
        malloc.keep_freed_memory()  # exact: the same arithmetic, fewer page faults


def speed_up(family: Family, mode: str, cache_dir: Path | None) -> FastPath:
    """Install the speed-ups this family takes; the compile itself starts later (its mode)."""
    mode = mode if family.torch_model is not None else compiled.OFF
    also: list[compiled.CompilesItself] = []
    parts = compiled.parts_of(family.torch_model)
    greedy_decoder: blip_greedy.GreedyBlipDecoder | None = None
    ahead: EncodedAhead | None = None
    if blip_greedy.is_blip_captioner(family.torch_model):
        # Eager, and the same numbers as transformers' batch (tested bit for bit), so in
        # every mode, from the first caption: the greedy decoder, and the ViT one image at
        # a time (faster than the batch). Compiled, the decoder's step runs as a traced graph
        # of the same kernels. Inductor is left out for BLIP: its kernels round differently,
        # so captions would change, and the exact path alone meets the speed targets (see
        # docs/performance.md).
        greedy_decoder = blip_greedy.GreedyBlipDecoder(family.torch_model.text_decoder)
        greedy_decoder.install()
        ahead = run_one_image_at_a_time(family.torch_model.vision_model)
        # The batcher starts each image's ViT as it arrives (begin).
        family.encoded_ahead = ahead
        parts = ()
        if mode != compiled.OFF:
            also.append(greedy_decoder)
    if not parts and not also:
        # Nothing to compile (ViT-GPT2, GIT, Idefics3...): no thread, and no warning
        # about a compile that was never going to happen.
        mode = compiled.OFF

    def warm() -> None:
        from PIL import Image

        # Two images: the batch path (one image at a time through an encoder's batch-1
        # graph) and a traced step that serves every batch size.
        family.generate([Image.new("RGB", (64, 64), (127, 127, 127))] * 2, "")

    switch = compiled.CompiledModel(
        family.torch_model, mode, warm, cache_dir=cache_dir, also=also, parts=parts
    )
    return FastPath(switch, greedy_decoder, ahead)
