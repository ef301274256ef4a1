"""Captioner on Hugging Face transformers 5: the image-text-to-text pipeline (with one chat
message per image for chat VLMs), or a VisionEncoderDecoder model (ViT + GPT-2 style) driven
directly, which that pipeline refuses."""

from __future__ import annotations

import abc
import atexit
import difflib
import hashlib
import importlib.util
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from captioner.adapters.captioners.transformers import blip_greedy, compiled, malloc
from captioner.domain.caption_text import DEFAULT_INSTRUCTION, clean_caption
from captioner.domain.errors import CaptionerUnavailable, CaptioningFailed
from captioner.domain.model import Caption, DecodedImage, Provenance, Readiness

log = logging.getLogger(__name__)

VISION_ENCODER_DECODER = "vision-encoder-decoder"
VLM_EXTRA = "install the vlm extra: make install-vlm, or pip install 'captioner[vlm]'"
# Families whose processors need torchvision (transformers has no PIL fallback for them).
NEEDS_TORCHVISION = frozenset({"smolvlm", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"})
# Models whose prompt is the start of the caption ("a photo of" -> "a photo of a cat"); for
# every other model the prompt is an instruction, and the caption is only what it answers.
PROMPT_STARTS_CAPTION = frozenset({"blip", "git"})
# What a plain caption asks of models that want a task prompt rather than nothing.
PLAIN_CAPTION_PROMPTS = {"florence2": "<CAPTION>", "paligemma": "caption en"}
# What decides a local model's captions: its configuration and its weights.
_MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt")


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


class _Family(abc.ABC):
    """One way of running a kind of model: its input size, and a batched generate."""

    target_size: tuple[int, int] | None = None  # (width, height) the processor resizes to
    resample: int | None = None
    torch_model: Any = None  # the torch module that generates, for the compiled path
    encoded_ahead: compiled.EncodedAhead | None = None  # where an image is begun

    @abc.abstractmethod
    def generate(self, images: list[Any], prompt: str) -> list[str]:
        """Describe images (PIL, RGB) that share one prompt."""


class _PipelineFamily(_Family):
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
        if ahead is None:
            return
        pixels = self._pipe.processor.image_processor(images=[image], return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self._pipe.device, dtype=self._pipe.dtype)
        with torch.inference_mode():
            # The keywords BLIP's generate passes its vision model.
            ahead.encode(pixel_values, interpolate_pos_encoding=False)


class _ChatFamily(_Family):
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


class _EncoderDecoderFamily(_Family):
    """VisionEncoderDecoder checkpoints: separate image processor and tokenizer, no processor."""

    def __init__(self, model_id: str, device: str, dtype: Any, generation: GenerationSettings):
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        model_class: Any = VisionEncoderDecoderModel
        self._model = model_class.from_pretrained(model_id, dtype=dtype)
        self._model.to(device)
        self._model.eval()
        self.torch_model = self._model
        self._image_processor = AutoImageProcessor.from_pretrained(model_id)
        self._tokenizer = AutoTokenizer.from_pretrained(model_id)
        self._device = device
        self._dtype = dtype
        self._generate_kwargs = generation.as_kwargs()
        self.target_size, self.resample = _processor_size(self._image_processor)

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


class TransformersCaptioner:
    """Implements the Captioner and BatchCaptioner ports on a Hugging Face model.

    The model loads once, in the background (``start``), so a server can answer /healthz and
    /images while it loads and report the reason on /readyz if loading fails. All generate
    calls are serialised by a lock: torch modules are not safe to run from many threads.
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        half_precision: bool = True,
        generation: GenerationSettings | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        torch_threads: int = 0,
        warm_up: bool = True,
        on_loaded: Callable[[float], None] | None = None,
        load_now: bool = True,
        compile: str = compiled.OFF,
        compile_cache_dir: Path | None = None,
    ) -> None:
        self._model_name = model
        self._device_setting = device
        self._half_precision = half_precision
        self._generation = generation or GenerationSettings()
        self._instruction = instruction
        self._torch_threads = torch_threads
        self._warm_up = warm_up
        self._on_loaded = on_loaded
        self._compile = compile
        self._compile_cache_dir = compile_cache_dir
        self.compiled: compiled.CompiledModel | None = None
        self.greedy_decoder: blip_greedy.GreedyBlipDecoder | None = None
        self.encoded_ahead: compiled.EncodedAhead | None = None
        self._family: _Family | None = None
        self._failure: str | None = None
        self._loaded = threading.Event()
        self._closing = threading.Event()
        self._start_lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self._model_lock = threading.Lock()
        self.device = ""
        self.load_seconds: float | None = None
        self._revision: str | None = None
        if load_now:
            self.start()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def provenance(self) -> Provenance:
        """The revision is known once the model has loaded (before that, no caption exists)."""
        settings: dict[str, Any] = self._generation.as_kwargs()
        if isinstance(self._family, _ChatFamily):
            settings["instruction"] = self._instruction  # what a chat model was asked
        return Provenance.of(self._revision, settings)

    def start(self) -> None:
        """Begin loading in a background thread (idempotent)."""
        with self._start_lock:
            if self._loader is None and not self._closing.is_set():
                _close_before_exit(self)
                self._loader = threading.Thread(
                    target=self._load, name="captioner-model-loader", daemon=True
                )
                self._loader.start()

    def close(self) -> None:
        """Stop using torch: no load stage, compile or generate begins from now on, and the
        ones under way are waited out. Idempotent; run at interpreter exit for a captioner
        nobody closed, since a thread still inside torch when the interpreter finalises
        aborts the process ("terminate called without an active exception", status 134)."""
        self._closing.set()
        with self._start_lock:
            loader = self._loader
        if loader is not None and loader is not threading.current_thread():
            loader.join()
        if self.compiled is not None:
            self.compiled.close()
        with self._model_lock:  # a generate under way (the batcher's worker) ends first
            pass

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        self.start()
        self._loaded.wait(timeout)
        return self.readiness()

    def readiness(self) -> Readiness:
        if self._failure is not None:
            # The model is loaded once per process: only new settings and a restart cure it.
            return Readiness(False, self._failure, permanent=True)
        if self._closing.is_set():
            return Readiness(False, f"model {self._model_name} is shut down")
        if not self._loaded.is_set():
            return Readiness(False, f"model {self._model_name} is loading")
        return Readiness.ok()

    def prepare(self, image: DecodedImage) -> DecodedImage:
        """Shrink to the model's input size on the caller's thread, so the model never waits
        on PIL for a big photo; the processor's own resize is then close to free."""
        family = self._family
        if family is None or family.target_size is None:
            return image
        pixels: Any = image.pixels
        width, height = family.target_size
        if pixels.width <= width and pixels.height <= height:
            return image
        if family.resample is None:
            resized = pixels.resize((width, height))
        else:
            resized = pixels.resize((width, height), resample=family.resample)
        return replace(image, pixels=resized)

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        prepared = self.prepare(image)
        began = time.perf_counter()
        text = self.describe_batch([(prepared, prompt)])[0]
        return Caption(text, (time.perf_counter() - began) * 1000)

    def begin(self, image: DecodedImage, prompt: str) -> None:
        family = self._family
        # Only BLIP's pipeline encodes ahead (its ViT runs one image at a time anyway).
        if not isinstance(family, _PipelineFamily) or family.encoded_ahead is None:
            return
        with self._model_lock:
            if not self._closing.is_set():
                family.begin(image.pixels, prompt)

    def describe_batch(self, images: Sequence[tuple[DecodedImage, str]]) -> list[str]:
        family = self._ready_family()
        results: list[str] = [""] * len(images)
        by_prompt: dict[str, list[int]] = {}
        for index, (_, prompt) in enumerate(images):
            by_prompt.setdefault(prompt, []).append(index)
        with self._model_lock:
            if self._closing.is_set():
                raise CaptionerUnavailable(f"The model {self._model_name} is shut down.")
            try:
                for prompt, indexes in by_prompt.items():
                    try:
                        texts = family.generate([images[i][0].pixels for i in indexes], prompt)
                    except Exception as error:
                        log.exception("generate failed on a batch of %d", len(indexes))
                        raise CaptioningFailed(
                            f"The model failed to describe this image ({type(error).__name__})."
                        ) from error
                    for i, text in zip(indexes, texts, strict=True):
                        results[i] = text
            finally:
                if family.encoded_ahead is not None:
                    # The batcher begins a batch's images just before describing it: whatever
                    # this batch left is stale, and would only hold memory.
                    family.encoded_ahead.clear()
        return results

    def _ready_family(self) -> _Family:
        self.start()
        if not self._loaded.is_set():
            raise CaptionerUnavailable(
                f"The model {self._model_name} is still loading; try again in a moment."
            )
        if self._family is None:
            # Permanent: no Retry-After; the message says which setting to change.
            raise CaptionerUnavailable(f"{self._failure}.", retry_after_s=None)
        return self._family

    def _load(self) -> None:
        began = time.perf_counter()
        try:
            family = self._build_family()
            self._stop_if_closing()
            if self._warm_up:
                self._warm_up_once(family)
            self._stop_if_closing()
            self.compiled = self._compiled_model(family)
            if self.compiled.mode == compiled.WAIT:
                self.compiled.compile_now()
            # Only a model that loaded and warmed up serves captions.
            self._family = family
        except _Closed:
            log.info("model %s: loading stopped, the captioner was closed", self._model_name)
        except Exception as error:
            advice = error.advice if isinstance(error, ModelNotFound) else self._what_to_do()
            self._failure = f"model {self._model_name} could not be loaded: {error} -- {advice}"
            log.error("%s", self._failure)
        else:
            self.load_seconds = time.perf_counter() - began
            log.info(
                "model %s loaded on %s in %.1f s (torch threads: %d)",
                self._model_name,
                self.device,
                self.load_seconds,
                self._torch_thread_count(),
            )
            if self._on_loaded is not None:
                self._on_loaded(self.load_seconds)
        finally:
            self._loaded.set()
        if self.compiled is not None and self._family is not None and not self._closing.is_set():
            self.compiled.start()  # background mode: eager serves until the compiled is warm

    def _stop_if_closing(self) -> None:
        if self._closing.is_set():
            raise _Closed()

    def _compiled_model(self, family: _Family) -> compiled.CompiledModel:
        mode = self._compile if family.torch_model is not None else compiled.OFF
        also: list[compiled.CompilesItself] = []
        parts = compiled.parts_of(family.torch_model)
        if blip_greedy.is_blip_captioner(family.torch_model):
            # Eager, and the same numbers as transformers' batch (tested bit for bit), so in
            # every mode, from the first caption: the greedy decoder, and the ViT one image at
            # a time (0.82-0.93x of the batch's time). Compiled, the decoder's step runs as a
            # traced graph of the same kernels. Inductor is left out for BLIP: its kernels
            # round differently, which changed 1 caption in 40 on the bench model, and the
            # exact path alone meets the speed targets (README, "Faster model path").
            self.greedy_decoder = blip_greedy.GreedyBlipDecoder(family.torch_model.text_decoder)
            self.greedy_decoder.install()
            ahead = compiled.run_one_image_at_a_time(family.torch_model.vision_model)
            # The batcher starts each image's ViT as it arrives (begin).
            family.encoded_ahead = self.encoded_ahead = ahead
            parts = ()
            if mode != compiled.OFF:
                also.append(self.greedy_decoder)
        if not parts and not also:
            # Nothing to compile (ViT-GPT2, GIT, Idefics3...): no thread, and no warning
            # about a compile that was never going to happen.
            mode = compiled.OFF

        def warm() -> None:
            from PIL import Image

            # Two images: the batch path (one image at a time through an encoder's batch-1
            # graph) and a traced step that serves every batch size.
            family.generate([Image.new("RGB", (64, 64), (127, 127, 127))] * 2, "")

        return compiled.CompiledModel(
            family.torch_model,
            mode,
            warm,
            cache_dir=self._compile_cache_dir,
            also=also,
            parts=parts,
        )

    def _what_to_do(self) -> str:
        if Path(self._model_name).is_dir():
            return (
                "check it is a directory saved with save_pretrained (or set CAPTIONER_MODEL "
                "to one), and restart"
            )
        return (
            "set CAPTIONER_MODEL to a hub id this machine can reach; without the hub, set "
            "HF_HUB_OFFLINE=1 and CAPTIONER_MODEL to a local model directory (saved with "
            "save_pretrained), and restart"
        )

    def _build_family(self) -> _Family:
        import torch
        from transformers import AutoConfig, pipeline
        from transformers.utils import logging as transformers_logging

        # Progress bars of weight loading would interleave with the request log.
        transformers_logging.disable_progress_bar()
        _log_through_the_host()
        if self._torch_threads > 0:
            torch.set_num_threads(self._torch_threads)
        device = self._device_setting
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        if device == "cpu":
            malloc.keep_freed_memory()  # exact: the same arithmetic, fewer page faults
        dtype = torch.float32
        if device.startswith("cuda") and self._half_precision:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        check_model_exists(self._model_name)
        config = AutoConfig.from_pretrained(self._model_name)
        self._revision = model_revision(self._model_name)
        if config.model_type == VISION_ENCODER_DECODER:
            return _EncoderDecoderFamily(self._model_name, device, dtype, self._generation)
        if config.model_type in NEEDS_TORCHVISION and not _has_torchvision():
            raise RuntimeError(
                f"{config.model_type} models need torchvision, which is not installed: {VLM_EXTRA}"
            )
        try:
            pipe = pipeline(
                "image-text-to-text", model=self._model_name, device=device, dtype=dtype
            )
        except ImportError as error:
            if "torchvision" in str(error) or "num2words" in str(error):
                raise RuntimeError(f"{error} -- {VLM_EXTRA}") from error
            raise
        pipe.model.eval()
        if getattr(pipe.processor, "chat_template", None):
            return _ChatFamily(pipe, self._generation, self._instruction)
        return _PipelineFamily(pipe, self._generation, config.model_type)

    def _warm_up_once(self, family: _Family) -> None:
        from PIL import Image

        # The first generate pays for lazy initialisation; pay it before /readyz says yes.
        with self._model_lock:
            family.generate([Image.new("RGB", (64, 64), (127, 127, 127))], "")

    @staticmethod
    def _torch_thread_count() -> int:
        import torch

        return int(torch.get_num_threads())


class _Closed(Exception):
    """Loading stopped between stages: the captioner was closed."""


class ModelNotFound(Exception):
    """The model setting names nothing this machine has: a local directory that does not
    exist, or a hub id absent from the cache while offline. ``advice`` says what to change."""

    def __init__(self, message: str, advice: str) -> None:
        super().__init__(message)
        self.advice = advice


def looks_like_a_path(model: str) -> bool:
    """Whether the model setting means a local directory rather than a hub id: it starts
    with ``.``, ``/`` or ``~``, ends with a slash, or its first component is a local
    directory (``models/blip-bse`` beside ``models/``)."""
    if model.startswith((".", "/", "~")) or model.endswith(("/", "\\")):
        return True
    first = Path(model).parts[0] if Path(model).parts else ""
    return "/" in model and bool(first) and Path(first).is_dir()


def check_model_exists(model: str) -> None:
    """Raise ModelNotFound, saying what is there instead, when the model cannot be found."""
    if Path(model).expanduser().is_dir():
        return
    if looks_like_a_path(model):
        raise ModelNotFound(
            _no_such_directory(model),
            "set CAPTIONER_MODEL to a directory saved with save_pretrained, and restart",
        )
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.is_offline_mode():
        return  # the hub answers for itself (an unknown id, no network...)
    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid hub id at all
        cached = None
    if not isinstance(cached, str):
        raise ModelNotFound(
            f"{model} is not in this machine's Hugging Face cache, and HF_HUB_OFFLINE is set, "
            "so it cannot be downloaded",
            "download it once with the network on (HF_HUB_OFFLINE unset), or set "
            "CAPTIONER_MODEL to a local model directory, and restart",
        )


def _no_such_directory(model: str) -> str:
    given = Path(model.rstrip("/\\") or model).expanduser()
    message = f"no such model directory: {given.absolute()}"
    parent = given.parent
    shown = f"{model.rstrip('/').rsplit('/', 1)[0]}/" if "/" in model.rstrip("/") else "./"
    if not parent.is_dir():
        return f"{message} ({shown} does not exist either)"
    present = sorted(child.name for child in parent.iterdir() if child.is_dir())
    near = difflib.get_close_matches(given.name, present, n=3, cutoff=0.6)
    listed = near or present[:8]
    if listed:
        return f"{message} ({shown} has: {', '.join(listed)})"
    return f"{message} ({shown} has no directories)"


# Captioners whose threads may still be inside torch; closed before the interpreter exits.
_OPEN: weakref.WeakSet[TransformersCaptioner] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _close_before_exit(captioner: TransformersCaptioner) -> None:
    global _exit_hook_registered
    with _exit_hook_lock:
        _OPEN.add(captioner)
        if not _exit_hook_registered:
            # threading's own hook (concurrent.futures' too) runs before threads are joined
            # and before any atexit hook, so torch's own (inductor's worker pool) still works
            # while a compile under way finishes; atexit is the fallback.
            register = getattr(threading, "_register_atexit", atexit.register)
            register(_close_all)
            _exit_hook_registered = True


def _close_all() -> None:
    for captioner in list(_OPEN):
        try:
            captioner.close()
        except Exception:  # one captioner's failure must not leave the others running
            log.exception("closing model %s at exit failed", captioner.model_name)


def model_revision(model: str) -> str | None:
    """The hub commit of the cached snapshot the weights load from, or for a local directory
    ``sha256:`` of its configuration and weight files (names and bytes, so any change shows)."""
    directory = Path(model)
    if not directory.is_dir():
        from transformers.utils.hub import cached_file, extract_commit_hash

        # The snapshot folder the config resolved to is named by the commit it holds.
        return extract_commit_hash(cached_file(model, "config.json"), None)
    digest = hashlib.sha256()
    files = sorted({path for pattern in _MODEL_FILES for path in directory.glob(pattern)})
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as content:
            while chunk := content.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _log_through_the_host() -> None:
    """transformers and huggingface_hub put their own stderr handler on their loggers; beside
    the host program's handlers every warning (each hub retry, say) was printed twice. Their
    records go to the host's handlers only: one line per event, in the host's format."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        if type(handler) is logging.StreamHandler:  # the library's own, not one a host added
            hub.removeHandler(handler)
    hub.propagate = True


def _processor_size(image_processor: Any) -> tuple[tuple[int, int] | None, int | None]:
    size = getattr(image_processor, "size", None) or {}
    resample = getattr(image_processor, "resample", None)
    resample_value = int(resample) if resample is not None else None
    if isinstance(size, dict) and "height" in size and "width" in size:
        return (int(size["width"]), int(size["height"])), resample_value
    if hasattr(size, "height") and hasattr(size, "width") and size.height and size.width:
        return (int(size.width), int(size.height)), resample_value
    return None, resample_value


def _has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _generated_text(output: Any) -> str:
    # The pipeline answers a dict per image, or a one-element list of it, by version.
    if isinstance(output, list):
        output = output[0]
    text = output.get("generated_text", "") if isinstance(output, dict) else str(output)
    return str(text).strip()
