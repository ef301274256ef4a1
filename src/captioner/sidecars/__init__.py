"""Captions in the files other tools read beside an image: XMP, .txt, .caption and JSON
sidecars, written as images are captioned or exported, and read back by `captioner import`."""
