"""Compiled inference for in-process torch models: torch.compile behind the eager path, switched
on only once it is warm, so a compile never delays or breaks captioning (CAPTIONER_COMPILE)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from captioner.adapters.captioners.transformers.one_image import ONE_IMAGE_OF, one_image_at_a_time

log = logging.getLogger(__name__)

OFF, BACKGROUND, WAIT = "off", "background", "wait"
COMPILE_MODES = (OFF, BACKGROUND, WAIT)

# Submodules compiled whole, by attribute path, when the model has them: the image encoders,
# most of a caption's FLOPs. Only parts without a KV cache are named, and they run one image at a
# time through one static graph (see CompiledModel). A text decoder compiled through
# transformers' DynamicCache recompiles on the cache's shapes (up to dynamo's recompile limit);
# BLIP's decoder is made faster another way (blip_greedy.GreedyBlipDecoder). Not
# VisionEncoderDecoder's ``encoder``: compiled, it gained nothing and rounds differently. Each
# tower named here was measured faster compiled (see docs/performance.md).
PARTS = (
    "vision_model",  # BLIP, BLIP-2, InstructBLIP: the ViT (the fast path names none for BLIP)
    "model.vision_tower",  # LLaVA-style chat models, PaliGemma, Florence-2
)

ENV_CACHE_DIR = "TORCHINDUCTOR_CACHE_DIR"


class CompilesItself(Protocol):
    """A part that compiles its own code (a decoder's step) and asks ``on()`` when to run it."""

    name: str

    def compile(self, on: Callable[[], bool]) -> None: ...


class CompiledModel:
    """Replaces chosen submodules' ``forward`` with a switch: eager until the compiled
    versions are warm, then compiled. ``warm`` runs a generate on the caller's thread, which
    alone sees the compiled code until it is warm.

    The compiled part runs one image at a time through one static graph of batch 1, frozen
    (inductor folds the weights in as constants and lays them out for its matmuls), and the
    images' outputs are concatenated: one graph for every batch size, no recompile, and one
    image's activations stay in the caches (see docs/performance.md). Inductor's kernels round
    differently from eager ones, so the caller names the parts (``parts``): the fast path names
    none for BLIP, which keeps its exact path."""

    def __init__(
        self,
        model: Any,
        mode: str,
        warm: Callable[[], None],
        cache_dir: Path | None = None,
        compiler: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
        also: Sequence[CompilesItself] = (),
        parts: Sequence[str] = PARTS,
    ) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self.mode = mode
        self._model = model
        self._warm = warm
        self._cache_dir = cache_dir
        self._compiler = compiler or _torch_compile
        self._also = tuple(also)
        self._part_paths = tuple(parts)
        self._active = False
        self._local = threading.local()
        self._done = threading.Event()
        self._stopping = threading.Event()
        self._thread_lock = threading.Lock()
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
            self._stop_if_closed()
            if self._cache_dir is not None:
                self._cache_dir.mkdir(parents=True, exist_ok=True)
                # Inductor reads the variable whenever it opens its cache (torch fills in a
                # /tmp default on import, so this overrides rather than defaults).
                os.environ[ENV_CACHE_DIR] = str(self._cache_dir)
            self.parts = self._install()
            if not self.parts:
                raise RuntimeError("the model has no part this compiler knows")
            self._stop_if_closed()
            self._local.warming = True
            try:
                with _frozen_weights():
                    self._warm()
            finally:
                self._local.warming = False
        except _Closed as closed:
            self.failure = str(closed)
            return False
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
        with self._thread_lock:
            if self.mode != BACKGROUND or self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(
                target=self.compile_now, name="captioner-compiler", daemon=True
            )
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until compiling ended (or was never asked for); True if it ended."""
        return self._done.wait(timeout)

    def close(self) -> None:
        """No compile begins from now on; one under way is waited out (a trace or inductor
        cannot be interrupted, and a thread left inside torch when the interpreter shuts down
        aborts the process: "terminate called without an active exception")."""
        with self._thread_lock:
            self._stopping.set()
            thread = self._thread
            if thread is None:
                self._done.set()  # none will run: whoever waits for it stops waiting
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            log.info("waiting for the compile under way to finish before closing")
            thread.join()

    def _stop_if_closed(self) -> None:
        if self._stopping.is_set():
            raise _Closed("the captioner was closed before compiling")

    def _install(self) -> list[str]:
        installed: list[str] = []
        for path in parts_of(self._model, self._part_paths):
            self._switch(_attribute(self._model, path))
            installed.append(path)
        for part in self._also:
            part.compile(self._on)
            installed.append(part.name)
        return installed

    def _on(self) -> bool:
        """Compiled code serves this call: it is warm, or this is the warming thread."""
        return self._active or bool(getattr(self._local, "warming", False))

    def _switch(self, module: Any) -> None:
        eager = module.forward
        # The module's own forward, under a one-image-at-a-time wrapper if it has one: the
        # compiler must see one image's code, not a loop over the batch. (Not ``__wrapped__``:
        # transformers' decorators set it on forward to the function without ``self``.)
        compiled = self._compiler(getattr(eager, ONE_IMAGE_OF, eager))

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self._on():
                return one_image_at_a_time(compiled, args, kwargs)
            return eager(*args, **kwargs)

        module.forward = forward


class _Closed(Exception):
    """The compile was not begun: the model is shutting down."""


def parts_of(model: Any, paths: Sequence[str] = PARTS) -> tuple[str, ...]:
    """Which of these submodule paths the model has."""
    return tuple(path for path in paths if _is_module(_attribute(model, path)))


def _torch_compile(function: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    # Static shapes: each part only ever sees one shape (one image; one bucket of rows).
    compiled: Callable[..., Any] = torch.compile(function, dynamic=False)
    return compiled


@contextlib.contextmanager
def _frozen_weights() -> Iterator[None]:
    """Inductor's freezing while the warm-up compiles: weights become constants, and MKL's
    packed layout serves their matmuls (mkl::_mkl_linear instead of aten::addmm). Inductor reads
    the flag when a graph compiles, outside the scope of torch.compile(options=...), which left
    it off: hence the process-wide switch, for the warm-up only."""
    import torch._inductor.config

    with torch._inductor.config.patch(freezing=True):
        yield


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
