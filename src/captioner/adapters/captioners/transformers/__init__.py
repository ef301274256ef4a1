"""Hugging Face models run in this process: loading, model families and the fast path."""
