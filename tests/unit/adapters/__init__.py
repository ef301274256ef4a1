"""Adapters whose logic needs no outside system (the batcher's arithmetic)."""
