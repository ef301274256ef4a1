"""BLIP's text decoder run greedily without transformers' generate loop: the same modules and
the same arithmetic per token, so the same tokens, with less work around each step."""

from __future__ import annotations

import logging
import math
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


# Batch sizes the compiled step has a graph for; a batch is padded up to the next one.
STEP_BUCKETS = (1, 2, 4, 8)


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
    a strided view."""

    name = "text_decoder steps"  # how CompiledModel lists it among its compiled parts

    def __init__(self, text_decoder: Any) -> None:
        self._decoder = text_decoder
        self._transformers_generate: Callable[..., Any] = text_decoder.generate
        self._compiled_step: Callable[..., Any] | None = None
        self._compiled_on: Callable[[], bool] = lambda: False
        self._told: set[str] = set()
        self.greedy_calls = 0  # calls this loop answered (tests and logs read it)

    def install(self) -> None:
        """From now on the model's own generate reaches this one."""
        self._decoder.generate = self.generate

    def uninstall(self) -> None:
        """Back to transformers' generate for every call."""
        self._decoder.__dict__.pop("generate", None)

    def compile_with(
        self, compiler: Callable[[Callable[..., Any]], Callable[..., Any]], on: Callable[[], bool]
    ) -> None:
        """Compile the one-token step over a static cache; ``on()`` says when to use it."""
        self._compiled_step = compiler(self._static_step)
        self._compiled_on = on

    def generate(self, input_ids: Any = None, **kwargs: Any) -> Any:
        if input_ids is not None:
            plan = self._plan(input_ids, kwargs)
            if plan is not None:
                self.greedy_calls += 1
                image = kwargs["encoder_hidden_states"]
                if self._static_fits(input_ids, plan):
                    return self._greedy_static(input_ids, image, plan)
                return self._greedy(input_ids, image, plan)
        return self._transformers_generate(input_ids=input_ids, **kwargs)

    def _static_fits(self, input_ids: Any, plan: _Plan) -> bool:
        """The compiled step serves unprompted captions of batches up to the largest bucket,
        once it is on; prompts (a multi-token first step) and bigger batches stay eager."""
        if self._compiled_step is None or not self._compiled_on():
            return False
        return int(input_ids.shape[1]) == 1 and int(input_ids.shape[0]) <= STEP_BUCKETS[-1]

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
        """Eager steps: a growing cache, the prompt's tokens in one first step."""
        cross_keys, cross_values = self._image_keys_values(image)
        past: list[tuple[Any, Any] | None] = [None] * len(cross_keys)

        def logits(tokens: Any, past_length: int) -> Any:
            hidden = self._layers(tokens, past_length, cross_keys, cross_values, past)
            return self._decoder.cls(hidden[:, -1:, :])[:, -1, :]

        return _search(input_ids, plan, logits)

    def _greedy_static(self, input_ids: Any, image: Any, plan: _Plan) -> Any:
        """The compiled step: the batch padded to a bucket size (one graph per bucket, none
        per batch size), keys and values written in place into a cache as long as the caption
        can get, later positions masked out."""
        import torch

        step = self._compiled_step
        assert step is not None
        batch = int(input_ids.shape[0])
        bucket = next(size for size in STEP_BUCKETS if size >= batch)
        if bucket > batch:
            filler = image.new_zeros((bucket - batch, *image.shape[1:]))
            image = torch.cat([image, filler], dim=0)
        cross_keys, cross_values = self._image_keys_values(image)
        heads = int(self._decoder.config.num_attention_heads)
        shape = (bucket, heads, plan.steps + 1, int(image.shape[-1]) // heads)
        keys = [image.new_zeros(shape) for _ in cross_keys]
        values = [image.new_zeros(shape) for _ in cross_keys]
        rows = input_ids.new_full((bucket, 1), plan.pad or 0)

        def logits(tokens: Any, past_length: int) -> Any:
            rows[:batch] = tokens
            at = torch.tensor(past_length, device=input_ids.device)
            return step(rows, at, keys, values, cross_keys, cross_values)[:batch]

        return _search(input_ids, plan, logits)

    def _image_keys_values(self, image: Any) -> tuple[list[Any], list[Any]]:
        """Every layer's cross-attention keys and values of the image, once, contiguous (as
        transformers' cache holds them after its first step)."""
        heads = int(self._decoder.config.num_attention_heads)
        keys, values = [], []
        for layer in self._decoder.bert.encoder.layer:
            attention = layer.crossattention.self
            keys.append(_split_heads(attention.key(image), heads).contiguous())
            values.append(_split_heads(attention.value(image), heads).contiguous())
        return keys, values

    def _static_step(
        self,
        token: Any,
        position: Any,
        keys: list[Any],
        values: list[Any],
        cross_keys: list[Any],
        cross_values: list[Any],
    ) -> Any:
        """One token for every row: the decoder's layers over a static cache (what the
        compiler sees), returning the last position's logits."""
        import torch

        embeddings = self._decoder.bert.embeddings
        hidden = embeddings.word_embeddings(token) + embeddings.position_embeddings(
            position.view(1, 1)
        )
        hidden = embeddings.LayerNorm(hidden)
        length = keys[0].shape[2]
        visible = torch.arange(length, device=hidden.device) <= position
        mask = torch.zeros(length, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~visible, torch.finfo(hidden.dtype).min).view(1, 1, 1, length)
        heads = int(self._decoder.config.num_attention_heads)
        at = position.view(1)
        for index, layer in enumerate(self._decoder.bert.encoder.layer):
            attention = layer.attention.self
            keys[index].index_copy_(2, at, _split_heads(attention.key(hidden), heads))
            values[index].index_copy_(2, at, _split_heads(attention.value(hidden), heads))
            query = _split_heads(attention.query(hidden), heads)
            context = _attend(query, keys[index], values[index], mask)
            hidden = layer.attention.output(context, hidden)
            query = _split_heads(layer.crossattention.self.query(hidden), heads)
            context = _attend(query, cross_keys[index], cross_values[index], None)
            hidden = layer.crossattention.output(context, hidden)
            hidden = layer.output(layer.intermediate(hidden), hidden)
        return self._decoder.cls(hidden)[:, -1, :]

    def _layers(
        self,
        tokens: Any,
        past_length: int,
        cross_keys: list[Any],
        cross_values: list[Any],
        past: list[tuple[Any, Any] | None],
    ) -> Any:
        import torch

        embeddings = self._decoder.bert.embeddings
        length = tokens.shape[1]
        positions = embeddings.position_ids[:, past_length : past_length + length]
        hidden = embeddings.word_embeddings(tokens) + embeddings.position_embeddings(positions)
        hidden = embeddings.LayerNorm(hidden)
        causal = None
        if length > 1:  # a prompt: each of its tokens sees itself and those before it
            causal = torch.full(
                (length, past_length + length),
                torch.finfo(hidden.dtype).min,
                dtype=hidden.dtype,
                device=hidden.device,
            ).triu(past_length + 1)
        heads = int(self._decoder.config.num_attention_heads)
        for index, layer in enumerate(self._decoder.bert.encoder.layer):
            attention = layer.attention.self
            keys = _split_heads(attention.key(hidden), heads)
            values = _split_heads(attention.value(hidden), heads)
            before = past[index]
            if before is None:  # transformers' cache concatenates onto an empty tensor: a copy
                keys, values = keys.contiguous(), values.contiguous()
            else:
                keys = torch.cat([before[0], keys], dim=-2)
                values = torch.cat([before[1], values], dim=-2)
            past[index] = (keys, values)
            query = _split_heads(attention.query(hidden), heads)
            context = _attend(query, keys, values, causal)
            hidden = layer.attention.output(context, hidden)
            query = _split_heads(layer.crossattention.self.query(hidden), heads)
            context = _attend(query, cross_keys[index], cross_values[index], None)
            hidden = layer.crossattention.output(context, hidden)
            hidden = layer.output(layer.intermediate(hidden), hidden)
        return hidden


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
