"""Hugging Face models run in this process: loading, model families and the fast path."""

from captioner.adapters.captioners.transformers.captioner import TransformersCaptioner
from captioner.adapters.captioners.transformers.families import GenerationSettings

__all__ = ["GenerationSettings", "TransformersCaptioner"]
