"""Compiled inference for in-process torch models: torch.compile behind the eager path, switched
on only once it is warm, so a compile never delays or breaks captioning (CAPTIONER_COMPILE)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OFF, BACKGROUND, WAIT = "off", "background", "wait"
COMPILE_MODES = (OFF, BACKGROUND, WAIT)

# Submodules compiled whole, by attribute path, when the model has them: the image encoders,
# most of a caption's FLOPs. Only parts without a KV cache are named: their one input shape that
# varies is the batch, so one dynamic graph (and one specialised to batch 1) serves every batch
# size. A text decoder compiled through transformers' DynamicCache recompiles on the cache's
# shapes (8 graphs for 5 batch sizes on a tiny BLIP, at dynamo's recompile limit); compiling its
# cache-free blocks one by one (48 small graphs per step on BLIP-base) showed no gain here.
PARTS = (
    "vision_model",  # BLIP, BLIP-2, InstructBLIP: the ViT
    "encoder",  # VisionEncoderDecoder: the image encoder
    "model.vision_tower",  # LLaVA-style chat models
)

ENV_CACHE_DIR = "TORCHINDUCTOR_CACHE_DIR"


class CompiledModel:
    """Replaces chosen submodules' ``forward`` with a switch: eager until the compiled
    versions are warm, then compiled for batches of 2 and more. ``warm`` runs a generate of 2
    images on the caller's thread, which alone sees the compiled code until it is warm: the one
    dynamic-batch graph it compiles serves every batch size from 2 up.

    A batch of 1 stays eager: dynamo would specialise a second graph for it, and on the 2-core
    bench machine that graph ran the BLIP-base encoder 1.07-1.24x slower than eager in three of
    three interleaved runs, while batch 8 ran 0.74-0.97x of eager's time."""

    def __init__(
        self,
        model: Any,
        mode: str,
        warm: Callable[[], None],
        cache_dir: Path | None = None,
        compiler: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
    ) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self.mode = mode
        self._model = model
        self._warm = warm
        self._cache_dir = cache_dir
        self._compiler = compiler or _torch_compile
        self._active = False
        self._local = threading.local()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.parts: list[str] = []
        self.seconds: float | None = None
        self.failure: str | None = None
        if mode == OFF:
            self._done.set()

    @property
    def active(self) -> bool:
        """True once the compiled path serves every call."""
        return self._active

    def compile_now(self) -> bool:
        """Compile and warm on this thread; True if the compiled path is now active."""
        began = time.perf_counter()
        try:
            if self._cache_dir is not None:
                self._cache_dir.mkdir(parents=True, exist_ok=True)
                # Inductor reads the variable whenever it opens its cache (torch fills in a
                # /tmp default on import, so this overrides rather than defaults).
                os.environ[ENV_CACHE_DIR] = str(self._cache_dir)
            self.parts = self._install()
            if not self.parts:
                raise RuntimeError("the model has no part this compiler knows")
            self._local.warming = True
            try:
                self._warm()
            finally:
                self._local.warming = False
        except Exception as error:
            # Eager stays: a compile failure must never cost a caption.
            self.failure = f"{type(error).__name__}: {error}"
            log.warning("compiled inference unavailable, staying eager: %s", self.failure)
            return False
        finally:
            self._done.set()
        self.seconds = time.perf_counter() - began
        self._active = True
        log.info(
            "compiled inference active after %.1f s (parts: %s; inductor cache %s)",
            self.seconds,
            ", ".join(self.parts),
            os.environ.get(ENV_CACHE_DIR, "default"),
        )
        return True

    def start(self) -> None:
        """In background mode, compile and warm in a background thread (idempotent)."""
        if self.mode != BACKGROUND or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self.compile_now, name="captioner-compiler", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until compiling ended (or was never asked for); True if it ended."""
        return self._done.wait(timeout)

    def _install(self) -> list[str]:
        installed: list[str] = []
        for path in PARTS:
            module = _attribute(self._model, path)
            if module is not None and _is_module(module):
                self._switch(module)
                installed.append(path)
        return installed

    def _switch(self, module: Any) -> None:
        eager = module.forward
        compiled = self._compiler(eager)

        def forward(*args: Any, **kwargs: Any) -> Any:
            on = self._active or getattr(self._local, "warming", False)
            if on and _batch_size(args, kwargs) != 1:
                return compiled(*args, **kwargs)
            return eager(*args, **kwargs)

        module.forward = forward


def _torch_compile(function: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    compiled: Callable[..., Any] = torch.compile(function, dynamic=True)
    return compiled


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The first dimension of the first tensor-like argument (None when there is none)."""
    for value in (*args, *kwargs.values()):
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return None


def _attribute(model: Any, path: str) -> Any:
    value = model
    for name in path.split("."):
        value = getattr(value, name, None)
        if value is None:
            return None
    return value


def _is_module(value: Any) -> bool:
    import torch

    return isinstance(value, torch.nn.Module)
