"""TransformersCaptioner: a Hugging Face model loaded once in the background, its device and
dtype, readiness, and the batcher's prepare/begin/describe_batch around the family's generate."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from captioner.adapters.captioners.transformers import blip_greedy, compiled, fast_path
from captioner.adapters.captioners.transformers.families import (
    ChatFamily,
    Family,
    GenerationSettings,
    PipelineFamily,
    load_family,
)
from captioner.adapters.captioners.transformers.one_image import EncodedAhead
from captioner.adapters.captioners.transformers.processed_ahead import (
    PreparedImage,
    ProcessedAhead,
    picture_of,
)
from captioner.adapters.captioners.transformers.revision import (
    ModelNotFound,
    check_model_exists,
    model_revision,
)
from captioner.domain.caption_text import DEFAULT_INSTRUCTION
from captioner.domain.errors import CaptionerUnavailable, CaptioningFailed
from captioner.domain.model import Caption, DecodedImage, Provenance, Readiness

log = logging.getLogger(__name__)

# Images are decoded with a short edge of at least this many times the model's input size:
# what the model then receives differs from a full decode's less than a JPEG re-save does
# (docs/performance.md, "Big photos decoded at the model's size").
DECODE_MARGIN = 2


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
        self.encoded_ahead: EncodedAhead | None = None
        self.processed_ahead: ProcessedAhead | None = None
        self._family: Family | None = None
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
        if isinstance(self._family, ChatFamily):
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

    def wanted_edge(self) -> int | None:
        """The short edge to decode images at for this model: its input size with a margin
        (docs/performance.md says why this one); None (every pixel) until the model has
        loaded, or when its input size is not fixed."""
        family = self._family
        if family is None or family.input_edge is None:
            return None
        return DECODE_MARGIN * family.input_edge

    def prepare(self, image: DecodedImage) -> DecodedImage:
        """On the caller's thread, so the model thread only runs the model: shrink to the
        model's input size (the processor's own resize is then close to free) and run the
        model's image processor, whose output the model's call takes instead."""
        family = self._family
        if family is None:
            return image
        pixels: Any = image.pixels
        if family.target_size is not None:
            width, height = family.target_size
            if pixels.width > width or pixels.height > height:
                size = (width, height)
                if family.resample is None:
                    pixels = pixels.resize(size)
                else:
                    pixels = pixels.resize(size, resample=family.resample)
        ahead = family.processed_ahead
        if ahead is not None and not ahead.declined:
            pixels = ahead.process(pixels)
        return image if pixels is image.pixels else replace(image, pixels=pixels)

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        prepared = self.prepare(image)
        began = time.perf_counter()
        text = self.describe_batch([(prepared, prompt)])[0]
        return Caption(text, (time.perf_counter() - began) * 1000)

    def begin(self, image: DecodedImage, prompt: str) -> None:
        family = self._family
        # Only BLIP's pipeline encodes ahead (its ViT runs one image at a time anyway).
        if not isinstance(family, PipelineFamily) or family.encoded_ahead is None:
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
                    pixels = [images[i][0].pixels for i in indexes]
                    prepared = [p for p in pixels if isinstance(p, PreparedImage)]
                    try:
                        with family.supplying(prepared):
                            texts = family.generate([picture_of(p) for p in pixels], prompt)
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

    def _ready_family(self) -> Family:
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
            fast = fast_path.speed_up(family, self._compile, self._compile_cache_dir)
            self.compiled = fast.compiled
            self.greedy_decoder, self.encoded_ahead = fast.greedy_decoder, fast.encoded_ahead
            if self.compiled.mode == compiled.WAIT:
                self.compiled.compile_now()
            self.processed_ahead = family.processed_ahead
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

    def _build_family(self) -> Family:
        import torch
        from transformers import AutoConfig
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
        fast_path.before_loading(device)
        dtype = torch.float32
        if device.startswith("cuda") and self._half_precision:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        check_model_exists(self._model_name)
        config = AutoConfig.from_pretrained(self._model_name)
        self._revision = model_revision(self._model_name)
        return load_family(
            self._model_name,
            config.model_type,
            device,
            dtype,
            self._generation,
            self._instruction,
        )

    def _warm_up_once(self, family: Family) -> None:
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
