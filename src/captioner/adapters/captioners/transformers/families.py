"""The model families, each one way of running a kind of Hugging Face model on transformers 5:
the image-text-to-text pipeline (one chat message per image for chat VLMs), or a
VisionEncoderDecoder model (ViT + GPT-2 style) driven directly, which that pipeline refuses."""

from __future__ import annotations

import abc
import contextlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from captioner.adapters.captioners.transformers.one_image import EncodedAhead
from captioner.adapters.captioners.transformers.processed_ahead import (
    PreparedImage,
    ProcessedAhead,
)
from captioner.domain.caption_text import DEFAULT_INSTRUCTION, clean_caption

VISION_ENCODER_DECODER = "vision-encoder-decoder"
VLM_EXTRA = "install the vlm extra: make install-vlm, or pip install 'captioner[vlm]'"
# Families whose processors need torchvision (transformers has no PIL fallback for them).
NEEDS_TORCHVISION = frozenset({"smolvlm", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"})
# Models whose prompt is the start of the caption ("a photo of" -> "a photo of a cat"); for
# every other model the prompt is an instruction, and the caption is only what it answers.
PROMPT_STARTS_CAPTION = frozenset({"blip", "git"})
# What a plain caption asks of models that want a task prompt rather than nothing.
PLAIN_CAPTION_PROMPTS = {"florence2": "<CAPTION>", "paligemma": "caption en"}


@dataclass(frozen=True)
class GenerationSettings:
    """How captions are generated; the defaults give good BLIP-base captions at greedy speed."""

    max_new_tokens: int = 30
    num_beams: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def as_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
        }
        # Only when set: these override what the checkpoint's generation_config asks for.
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.no_repeat_ngram_size > 0:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kwargs


class Family(abc.ABC):
    """One way of running a kind of model: its input size, and a batched generate."""

    target_size: tuple[int, int] | None = None  # (width, height) the processor resizes to
    # The short edge the processor needs: the larger side of target_size, or the short edge
    # it resizes to before cropping (CLIP-style processors: GIT); None when it varies.
    input_edge: int | None = None
    resample: int | None = None
    torch_model: Any = None  # the torch module that generates, for the compiled path
    encoded_ahead: EncodedAhead | None = None  # where an image is begun
    # The image processor as the model calls it, taking outputs computed on callers' threads.
    processed_ahead: ProcessedAhead | None = None

    @abc.abstractmethod
    def generate(self, images: list[Any], prompt: str) -> list[str]:
        """Describe images (PIL, RGB) that share one prompt."""

    def supplying(
        self, prepared: Sequence[PreparedImage]
    ) -> contextlib.AbstractContextManager[None]:
        """While generate runs on this thread, the processor takes these images' outputs."""
        if self.processed_ahead is None or not prepared:
            return contextlib.nullcontext()
        return self.processed_ahead.supplying(prepared)


class PipelineFamily(Family):
    """Models the image-text-to-text pipeline accepts with a plain text prompt (BLIP, GIT,
    Florence-2, PaliGemma...)."""

    def __init__(self, pipe: Any, generation: GenerationSettings, model_type: str) -> None:
        self._pipe = pipe
        self.torch_model = pipe.model
        self._generate_kwargs = generation.as_kwargs()
        self._prompt_starts_caption = model_type in PROMPT_STARTS_CAPTION
        self._plain_prompt = PLAIN_CAPTION_PROMPTS.get(model_type, "")
        image_processor = getattr(pipe.processor, "image_processor", None)
        self.target_size, self.resample = _processor_size(image_processor)
        self.input_edge = _input_edge(image_processor, self.target_size)
        if image_processor is not None:
            self.processed_ahead = ProcessedAhead(image_processor)
            pipe.processor.image_processor = self.processed_ahead

    def generate(self, images: list[Any], prompt: str) -> list[str]:
        import torch

        prompt = prompt or self._plain_prompt
        # The pipeline itself only turns off gradients; inference mode also skips autograd's
        # version counting, as the encoder-decoder path does.
        with torch.inference_mode():
            outputs = self._pipe(
                images=images,
                text=[prompt] * len(images),
                batch_size=len(images),
                return_full_text=self._prompt_starts_caption,
                generate_kwargs=self._generate_kwargs,
            )
        echo = "" if self._prompt_starts_caption else prompt
        return [clean_caption(_generated_text(output), echo) for output in outputs]

    def begin(self, image: Any, prompt: str) -> None:
        """The image's encoder output, computed now as the batch's generate would compute it
        (its pixels through the pipeline's own image processor, the encoder on that one
        image), for generate to take instead. The prompt plays no part in the encoder."""
        import torch

        ahead = self.encoded_ahead
        if ahead is None or self.processed_ahead is None:
            return
        # Prepared on the caller's thread, as a rule; processed here only when it was not.
        prepared = (
            image if isinstance(image, PreparedImage) else self.processed_ahead.process(image)
        )
        pixels = prepared.processed
        pixel_values = pixels["pixel_values"].to(self._pipe.device, dtype=self._pipe.dtype)
        with torch.inference_mode():
            # The keywords BLIP's generate passes its vision model.
            ahead.encode(pixel_values, interpolate_pos_encoding=False)


class ChatFamily(Family):
    """Chat VLMs (Idefics3, SmolVLM, Qwen2-VL...): one user message per image, holding the
    image and the instruction, through the processor's chat template."""

    def __init__(self, pipe: Any, generation: GenerationSettings, instruction: str) -> None:
        self._pipe = pipe
        self._generate_kwargs = generation.as_kwargs()
        self._instruction = instruction or DEFAULT_INSTRUCTION
        # Batched generation of a decoder-only model continues each row from its last token:
        # pad on the left, whatever the checkpoint's tokenizer says.
        for tokenizer in (pipe.tokenizer, getattr(pipe.processor, "tokenizer", None)):
            if tokenizer is not None:
                tokenizer.padding_side = "left"
        image_processor = getattr(pipe.processor, "image_processor", None)
        self.target_size, self.resample = _processor_size(image_processor)

    def generate(self, images: list[Any], prompt: str) -> list[str]:
        import torch

        instruction = prompt or self._instruction
        # The image must sit inside the message: the pipeline refuses chats and images passed
        # side by side, and echoes a template rendered by hand back whole.
        chats = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": image},
                        {"type": "text", "text": instruction},
                    ],
                }
            ]
            for image in images
        ]
        with torch.inference_mode():
            outputs = self._pipe(
                text=chats,
                batch_size=len(images),
                return_full_text=False,
                generate_kwargs=self._generate_kwargs,
            )
        return [clean_caption(_generated_text(output), instruction) for output in outputs]


class EncoderDecoderFamily(Family):
    """VisionEncoderDecoder checkpoints: separate image processor and tokenizer, no processor."""

    def __init__(self, model_id: str, device: str, dtype: Any, generation: GenerationSettings):
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        model_class: Any = VisionEncoderDecoderModel
        self._model = model_class.from_pretrained(model_id, dtype=dtype)
        self._model.to(device)
        self._model.eval()
        self.torch_model = self._model
        self.processed_ahead = ProcessedAhead(AutoImageProcessor.from_pretrained(model_id))
        self._image_processor = self.processed_ahead
        self._tokenizer = AutoTokenizer.from_pretrained(model_id)
        self._device = device
        self._dtype = dtype
        self._generate_kwargs = generation.as_kwargs()
        self.target_size, self.resample = _processor_size(self._image_processor)
        self.input_edge = _input_edge(self._image_processor, self.target_size)

    def generate(self, images: list[Any], prompt: str) -> list[str]:
        import torch

        pixel_values = self._image_processor(images=images, return_tensors="pt").pixel_values
        inputs: dict[str, Any] = {
            "pixel_values": pixel_values.to(self._device, dtype=self._dtype),
        }
        if prompt:
            # Conditional captioning: the prompt's tokens become the start of every caption.
            start = self._model.generation_config.decoder_start_token_id
            if start is None:
                start = self._model.config.decoder_start_token_id
            prompt_ids = self._tokenizer(prompt, add_special_tokens=False).input_ids
            row = torch.tensor([[start, *prompt_ids]], device=self._device)
            inputs["decoder_input_ids"] = row.repeat(len(images), 1)
            inputs["decoder_attention_mask"] = torch.ones_like(inputs["decoder_input_ids"])
        with torch.inference_mode():
            output = self._model.generate(**inputs, **self._generate_kwargs)
        texts: list[str] = self._tokenizer.batch_decode(output, skip_special_tokens=True)
        return [clean_caption(text, "") for text in texts]


def load_family(
    model: str,
    model_type: str,
    device: str,
    dtype: Any,
    generation: GenerationSettings,
    instruction: str,
) -> Family:
    """The family that runs this model (its configuration's ``model_type``), loaded on device."""
    from transformers import pipeline

    if model_type == VISION_ENCODER_DECODER:
        return EncoderDecoderFamily(model, device, dtype, generation)
    if model_type in NEEDS_TORCHVISION and not _has_torchvision():
        raise RuntimeError(
            f"{model_type} models need torchvision, which is not installed: {VLM_EXTRA}"
        )
    try:
        pipe = pipeline("image-text-to-text", model=model, device=device, dtype=dtype)
    except ImportError as error:
        if "torchvision" in str(error) or "num2words" in str(error):
            raise RuntimeError(f"{error} -- {VLM_EXTRA}") from error
        raise
    pipe.model.eval()
    if getattr(pipe.processor, "chat_template", None):
        return ChatFamily(pipe, generation, instruction)
    return PipelineFamily(pipe, generation, model_type)


def _processor_size(image_processor: Any) -> tuple[tuple[int, int] | None, int | None]:
    size = getattr(image_processor, "size", None) or {}
    resample = getattr(image_processor, "resample", None)
    resample_value = int(resample) if resample is not None else None
    if isinstance(size, dict) and "height" in size and "width" in size:
        return (int(size["width"]), int(size["height"])), resample_value
    if hasattr(size, "height") and hasattr(size, "width") and size.height and size.width:
        return (int(size.width), int(size.height)), resample_value
    return None, resample_value


def _input_edge(image_processor: Any, target_size: tuple[int, int] | None) -> int | None:
    if target_size is not None:
        return max(target_size)
    size = getattr(image_processor, "size", None) or {}
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    shortest = shortest or getattr(size, "shortest_edge", None)
    return int(shortest) if shortest else None


def _has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _generated_text(output: Any) -> str:
    # The pipeline answers a dict per image, or a one-element list of it, by version.
    if isinstance(output, list):
        output = output[0]
    text = output.get("generated_text", "") if isinstance(output, dict) else str(output)
    return str(text).strip()
