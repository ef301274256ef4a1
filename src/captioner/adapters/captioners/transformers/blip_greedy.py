"""BLIP's text decoder run greedily without transformers' generate loop: the same modules and
the same arithmetic per token, so the same tokens, with less work around each step."""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# What a caller may hand text_decoder.generate besides generation settings: BLIP's generate
# passes the image embeddings and masks; anything else (a streamer, custom logits processors or
# stopping criteria...) is transformers' business, so those calls take its path.
_MODEL_INPUTS = frozenset(
    {
        "encoder_hidden_states",
        "encoder_attention_mask",
        "attention_mask",
        "output_attentions",
        "output_hidden_states",
        "use_cache",
    }
)
# Generation settings this loop honours, or that greedy decoding never reads.
_UNDERSTOOD = frozenset(
    {
        "max_new_tokens",
        "max_length",
        "min_length",
        "min_new_tokens",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "suppress_tokens",
        "eos_token_id",
        "pad_token_id",
        "bos_token_id",
        "decoder_start_token_id",
        "num_beams",
        "do_sample",
        "num_return_sequences",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        # sampling and beam-search knobs: unread by greedy search
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "epsilon_cutoff",
        "eta_cutoff",
        "length_penalty",
        "early_stopping",
        # bookkeeping
        "transformers_version",
        "_from_model_config",
        "_commit_hash",
    }
)


def is_blip_captioner(model: Any) -> bool:
    """True for BlipForConditionalGeneration-shaped models: a BERT-style text decoder with an
    LM head, fed the vision model's embeddings through cross-attention."""
    decoder = getattr(model, "text_decoder", None)
    return (
        type(model).__name__ == "BlipForConditionalGeneration"
        and decoder is not None
        and hasattr(decoder, "bert")
        and hasattr(decoder, "cls")
    )


class GreedyBlipDecoder:
    """Stands in for ``text_decoder.generate`` once installed, for greedy search
    with settings it honours (max/min length, repetition penalty, no-repeat n-grams, suppressed
    tokens) on unpadded prompts; every other call goes to transformers' generate unchanged.

    Per token it calls the decoder's own Linear, LayerNorm and GELU modules on the same shapes
    as transformers does, and computes attention the way BlipTextSelfAttention does, so the
    logits are the same numbers. What it saves: transformers' cache objects, mask building,
    output records and keyword plumbing around each of 30 steps x 12 layers, and (the larger
    part at batch 8) keys and values of the image kept contiguous once instead of read through
    a strided view.

    Compiled (``compile``), the one-token step runs as a TorchScript graph traced from that
    same code and run without the graph executor's optimisations: the same ATen kernels on
    the same shapes, so still the same numbers (checked bit for bit when traced), minus the
    Python around ~300 small calls per token. Inductor's kernels were faster still but round
    differently, so captions changed (see docs/performance.md)."""

    name = "text_decoder step (TorchScript)"  # how CompiledModel lists it among its parts

    def __init__(self, text_decoder: Any) -> None:
        self._decoder = text_decoder
        self._transformers_generate: Callable[..., Any] = text_decoder.generate
        self._step: Any = None  # the eager step module, built on first use
        self._traced: Any = None
        self._trace_lock = threading.Lock()
        self._trace_failed = False
        self._compiled_on: Callable[[], bool] = lambda: False
        self._told: set[str] = set()
        self.greedy_calls = 0  # calls this loop answered (tests and logs read it)
        self.traced_calls = 0  # of which the traced step ran

    def install(self) -> None:
        """From now on the model's own generate reaches this one."""
        self._decoder.generate = self.generate

    def uninstall(self) -> None:
        """Back to transformers' generate for every call."""
        self._decoder.__dict__.pop("generate", None)

    def compile(self, on: Callable[[], bool]) -> None:
        """Run the one-token step as a traced graph whenever ``on()`` says so; the trace is
        taken on the first such call, from its own inputs."""
        self._compiled_on = on

    def generate(self, input_ids: Any = None, **kwargs: Any) -> Any:
        if input_ids is not None:
            plan = self._plan(input_ids, kwargs)
            if plan is not None:
                self.greedy_calls += 1
                return self._greedy(input_ids, kwargs["encoder_hidden_states"], plan)
        return self._transformers_generate(input_ids=input_ids, **kwargs)

    # --- which calls it takes -------------------------------------------------------------

    def _plan(self, input_ids: Any, kwargs: dict[str, Any]) -> _Plan | None:
        if kwargs.get("encoder_hidden_states") is None:
            return self._decline("no image embeddings")
        for mask_name in ("attention_mask", "encoder_attention_mask"):
            mask = kwargs.get(mask_name)
            if mask is not None and not bool(mask.bool().all()):
                return self._decline(f"a padded {mask_name}")
        settings = dict(kwargs)
        try:
            # transformers' own merge of the model's generation_config, the caller's
            # generation_config and keyword settings: what its generate would run with.
            config, model_inputs = self._decoder._prepare_generation_config(
                settings.pop("generation_config", None), **settings
            )
        except Exception as error:  # a transformers without this helper: its path, always
            return self._decline(f"generation settings unreadable ({error})")
        unknown = set(model_inputs) - _MODEL_INPUTS
        if unknown:
            return self._decline(f"arguments {', '.join(sorted(unknown))}")
        if (config.num_beams or 1) != 1 or config.do_sample:
            return self._decline("beam search or sampling")
        if (config.num_return_sequences or 1) != 1 or config.use_cache is False:
            return self._decline("several sequences per image, or no cache")
        if config.output_attentions or config.output_hidden_states:
            return self._decline("attentions or hidden states asked for")
        neutral = _neutral_settings()
        for name, value in config.to_dict().items():
            if name not in _UNDERSTOOD and value is not None and value != neutral.get(name):
                return self._decline(f"generation setting {name}={value!r}")
        plan = _Plan.of(config, int(input_ids.shape[1]), str(input_ids.device))
        if input_ids.shape[1] + plan.steps > int(self._decoder.config.max_position_embeddings):
            # transformers' own generate fails on it the way its callers know (IndexError)
            return self._decline("more tokens than the model has positions")
        return plan

    def _decline(self, why: str) -> _Plan | None:
        if why not in self._told:  # once per reason, not once per batch
            self._told.add(why)
            log.info("BLIP greedy decoder: transformers' generate runs calls with %s", why)
        return None

    # --- the loop -------------------------------------------------------------------------

    def _greedy(self, input_ids: Any, image: Any, plan: _Plan) -> Any:
        """A growing cache per layer, the prompt's tokens in one first step, then one token
        per step: eager, or through the traced graph once compiled."""
        import torch

        jit: Any = torch.jit  # typed loosely: stubs leave these out
        step = self._eager_step()
        cross_keys, cross_values = self._image_keys_values(image)
        # The decoder's own width: BLIP-large's image embeddings are wider (1024 vs 768).
        heads = step.heads
        size = int(self._decoder.config.hidden_size) // heads
        # Empty caches: the first step's keys and values are concatenated onto them, a copy,
        # as transformers' cache makes one.
        empty = image.new_zeros((int(input_ids.shape[0]), heads, 0, size))
        cache: list[tuple[Any, ...]] = [(empty,) * len(cross_keys)] * 2
        positions = self._decoder.bert.embeddings.position_ids
        traced = self._traced_step() if self._compiled_on() else None
        ran_traced = False

        def logits(tokens: Any, past_length: int) -> Any:
            nonlocal traced, ran_traced
            length = int(tokens.shape[1])
            at = positions[:, past_length : past_length + length]
            inputs = (tokens, at, cache[0], cache[1], cross_keys, cross_values)
            run = step
            if length == 1 and traced is not None:
                if traced is _NOT_YET:
                    traced = self._trace(step, inputs)
                if traced is not None:
                    run, ran_traced = traced, True
            if run is step:
                scores, cache[0], cache[1] = step(*inputs)
            else:
                # No profiling, no fusion: the graph runs the very kernels the eager step does.
                # (A process-wide flag; only the model's one working thread runs the graph.)
                with jit.optimized_execution(False):
                    scores, cache[0], cache[1] = run(*inputs)
            return scores

        sequences = _search(input_ids, plan, logits)
        self.traced_calls += ran_traced
        return sequences

    def _eager_step(self) -> Any:
        if self._step is None:
            self._step = _step_module(self._decoder)
        return self._step

    def _traced_step(self) -> Any:
        """The traced graph, ``_NOT_YET`` before the first trace, None when tracing failed."""
        if self._trace_failed:
            return None
        return self._traced if self._traced is not None else _NOT_YET

    def _trace(self, step: Any, inputs: tuple[Any, ...]) -> Any:
        """Trace the step on these inputs; keep the graph only if it gives the eager numbers
        bit for bit. None when it cannot be had: the eager step serves on."""
        import torch

        jit: Any = torch.jit
        with self._trace_lock:
            if self._traced is not None or self._trace_failed:
                return self._traced
            try:
                with jit.optimized_execution(False), warnings.catch_warnings():
                    # The tracer warns that Python branches and numbers are frozen into the
                    # graph: the one-token branch and the head size, all that it serves.
                    warnings.simplefilter("ignore", jit.TracerWarning)
                    warnings.simplefilter("ignore", FutureWarning)  # transformers' attributes
                    # TorchScript is deprecated, yet it alone runs a graph of the eager kernels
                    # without Python between them (inductor's own kernels round differently).
                    # torch is pinned; should a later one drop it, the check below or the
                    # failure itself leaves the eager step serving.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    traced = jit.trace(step, inputs, check_trace=False)
                    expected, got = _flat(step(*inputs)), _flat(traced(*inputs))
                if not all(torch.equal(a, b) for a, b in zip(expected, got, strict=True)):
                    raise RuntimeError("the traced step's numbers differ from the eager step's")
            except Exception as error:
                self._trace_failed = True
                log.warning("BLIP greedy decoder: staying with the eager step: %s", error)
                return None
            self._traced = traced
            log.info("BLIP greedy decoder: traced step active (same numbers as eager)")
            return traced

    def _image_keys_values(self, image: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """Every layer's cross-attention keys and values of the image, once, contiguous (as
        transformers' cache holds them after its first step)."""
        heads = int(self._decoder.config.num_attention_heads)
        keys, values = [], []
        for layer in self._decoder.bert.encoder.layer:
            attention = layer.crossattention.self
            keys.append(_split_heads(attention.key(image), heads).contiguous())
            values.append(_split_heads(attention.value(image), heads).contiguous())
        return tuple(keys), tuple(values)


_NOT_YET = object()  # the step is to be traced at its first compiled call


def _flat(output: Any) -> list[Any]:
    """The tensors of a step's output (logits, keys, values), in order."""
    scores, keys, values = output
    return [scores, *keys, *values]


def _step_module(text_decoder: Any) -> Any:
    """The decoder's step as a torch module (what the tracer records): tokens not yet seen,
    their positions, every layer's cached keys and values, the image's keys and values ->
    the last position's logits and the grown caches."""
    import torch

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # The plain modules the step runs, not the decoder itself: the tracer probes every
            # attribute of every module it records, and a PreTrainedModel's ``loss_function``
            # property warns "`loss_type=None` was set in the config" when probed (every start,
            # on a library user's stderr too).
            self.embeddings = text_decoder.bert.embeddings
            self.layers = text_decoder.bert.encoder.layer
            self.head = text_decoder.cls
            self.heads = int(text_decoder.config.num_attention_heads)

        def forward(
            self,
            tokens: Any,
            positions: Any,
            past_keys: tuple[Any, ...],
            past_values: tuple[Any, ...],
            cross_keys: tuple[Any, ...],
            cross_values: tuple[Any, ...],
        ) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
            embeddings = self.embeddings
            hidden = embeddings.word_embeddings(tokens) + embeddings.position_embeddings(positions)
            hidden = embeddings.LayerNorm(hidden)
            length, past_length = tokens.shape[1], past_keys[0].shape[2]
            causal = None
            if length > 1:  # a prompt: each of its tokens sees itself and those before it
                causal = torch.full(
                    (length, past_length + length),
                    torch.finfo(hidden.dtype).min,
                    dtype=hidden.dtype,
                    device=hidden.device,
                ).triu(past_length + 1)
            keys_out, values_out = [], []
            for index, layer in enumerate(self.layers):
                attention = layer.attention.self
                new_keys = _split_heads(attention.key(hidden), self.heads)
                new_values = _split_heads(attention.value(hidden), self.heads)
                keys = torch.cat([past_keys[index], new_keys], dim=-2)
                values = torch.cat([past_values[index], new_values], dim=-2)
                keys_out.append(keys)
                values_out.append(values)
                query = _split_heads(attention.query(hidden), self.heads)
                context = _attend(query, keys, values, causal)
                hidden = layer.attention.output(context, hidden)
                query = _split_heads(layer.crossattention.self.query(hidden), self.heads)
                context = _attend(query, cross_keys[index], cross_values[index], None)
                hidden = layer.crossattention.output(context, hidden)
                hidden = layer.output(layer.intermediate(hidden), hidden)
            scores = self.head(hidden[:, -1:, :])[:, -1, :]
            return scores, tuple(keys_out), tuple(values_out)

    return Step().eval()


class _Plan:
    """How many tokens to make, when to stop, and the logits processors transformers would
    build for these settings, in its order."""

    def __init__(self, steps: int, eos: list[int], pad: int | None, processors: Any) -> None:
        self.steps = steps
        self.eos = eos
        self.pad = pad
        self.processors = processors

    @classmethod
    def of(cls, config: Any, prompt_length: int, device: str) -> _Plan:
        from transformers import (
            LogitsProcessorList,
            MinLengthLogitsProcessor,
            MinNewTokensLengthLogitsProcessor,
            NoRepeatNGramLogitsProcessor,
            RepetitionPenaltyLogitsProcessor,
            SuppressTokensLogitsProcessor,
        )

        if config.max_new_tokens is not None:
            steps = int(config.max_new_tokens)
        else:
            steps = int(config.max_length) - prompt_length
        eos_setting = config.eos_token_id
        eos = [] if eos_setting is None else [int(eos_setting)]
        if isinstance(eos_setting, list):
            eos = [int(token) for token in eos_setting]
        pad = config.pad_token_id
        if pad is None and eos:
            pad = eos[0]  # what transformers falls back to, with a warning
        processors = LogitsProcessorList()
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.no_repeat_ngram_size is not None and config.no_repeat_ngram_size > 0:
            processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.min_length is not None and config.min_length > 0 and eos:
            processors.append(MinLengthLogitsProcessor(config.min_length, eos, device))
        if config.min_new_tokens is not None and config.min_new_tokens > 0 and eos:
            processors.append(
                MinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, eos, device)
            )
        if config.suppress_tokens is not None:
            processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device))
        return cls(max(steps, 0), eos, None if pad is None else int(pad), processors)


def _search(input_ids: Any, plan: _Plan, logits: Callable[[Any, int], Any]) -> Any:
    """Greedy search as transformers runs it: ``logits(tokens, past_length)`` gives the next
    logits of each row for the tokens not yet seen (the prompt first, then one token), the
    processors adjust them, the best token wins, rows that ended get padding."""
    import torch

    sequences = step_input = input_ids
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    eos = torch.tensor(plan.eos, dtype=torch.long, device=input_ids.device)
    for _ in range(plan.steps):
        past_length = sequences.shape[1] - step_input.shape[1]
        # As transformers: the last position's logits, as a float32 copy.
        scores = logits(step_input, past_length).to(copy=True, dtype=torch.float32)
        next_tokens = torch.argmax(plan.processors(sequences, scores), dim=-1)
        if plan.pad is not None:
            next_tokens = torch.where(finished, plan.pad, next_tokens)
        sequences = torch.cat([sequences, next_tokens[:, None]], dim=-1)
        if eos.numel():
            finished = finished | torch.isin(next_tokens, eos)
            if bool(finished.all()):
                break
        step_input = next_tokens[:, None]
    return sequences


def _neutral_settings() -> dict[str, Any]:
    """Each generation setting at the value that leaves greedy search untouched: a fresh
    GenerationConfig with the defaults transformers fills in at generate time."""
    from transformers import GenerationConfig

    neutral = GenerationConfig()  # type: ignore[no-untyped-call]
    fill = getattr(neutral, "_get_default_generation_params", None)
    settings: dict[str, Any] = neutral.to_dict()
    if fill is not None:
        settings.update(fill())
    return settings


def _split_heads(states: Any, heads: int) -> Any:
    """(batch, tokens, hidden) -> (batch, heads, tokens, head size), as a view."""
    batch, tokens, hidden = states.shape
    return states.view(batch, tokens, heads, hidden // heads).transpose(1, 2)


def _attend(query: Any, keys: Any, values: Any, mask: Any) -> Any:
    """BlipTextSelfAttention's eager attention, step for step (the same rounding)."""
    import torch

    scores = torch.matmul(query, keys.transpose(-1, -2))
    scores = scores / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = scores + mask
    probabilities = torch.softmax(scores, dim=-1)
    context = torch.matmul(probabilities, values).permute(0, 2, 1, 3).contiguous()
    batch, tokens = context.shape[:2]
    return context.view(batch, tokens, -1)
