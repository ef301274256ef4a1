"""Pillow decoding and rendering on real files."""
