"""`captioner export --sidecars DIR` and `--webdataset DIR`: the library as files other
tools read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.config import Settings, canonical_model_name
from captioner.domain.service import CaptionService
from captioner.exports import export_sidecars, export_webdataset
from captioner.sidecars.files import SIDECAR_FORMATS

RECORD_FORMATS = ("jsonl", "csv")


def add_export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument(
        "--format",
        choices=RECORD_FORMATS + SIDECAR_FORMATS,
        help="jsonl (default) or csv on stdout; with --sidecars: xmp (default), txt, caption "
        "or json",
    )
    export.add_argument(
        "--sidecars",
        type=Path,
        metavar="DIR",
        help="a sidecar per stored image in DIR (named after its original name where unique, "
        "else its SHA-256), with the caption the listing shows (--model: that model's)",
    )
    export.add_argument(
        "--webdataset",
        type=Path,
        metavar="DIR",
        help="WebDataset tar shards in DIR (key.<ext>, key.txt, key.json) and manifest.json",
    )
    export.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        metavar="N",
        help="samples per WebDataset shard (default 1000)",
    )
    export.add_argument(
        "--split",
        default="train",
        help="the split folder of --hf-imagefolder (default train: DIR/train/metadata.jsonl)",
    )


def record_format(args: argparse.Namespace) -> str | None:
    """The stdout format an export asked for; None (the reason printed) when it cannot be."""
    if args.format is None or args.format in RECORD_FORMATS:
        return args.format or "jsonl"
    print(f"captioner: --format {args.format} goes with --sidecars DIR", file=sys.stderr)
    return None


def export_files(service: CaptionService, settings: Settings, args: argparse.Namespace) -> int:
    """--sidecars or --webdataset; 1 when nothing was stored to export."""
    model = canonical_model_name(args.model) if args.model is not None else None
    if args.sidecars is not None:
        sidecar_format = args.format or "xmp"
        if sidecar_format not in SIDECAR_FORMATS:
            print(f"captioner: --sidecars writes {', '.join(SIDECAR_FORMATS)}", file=sys.stderr)
            return 2
        written = export_sidecars(service, args.sidecars, sidecar_format, model)
        print(f"wrote {written} {sidecar_format} sidecar(s) to {args.sidecars}")
    else:
        if args.shard_size < 1:
            print("captioner: --shard-size must be at least 1", file=sys.stderr)
            return 2
        shards = export_webdataset(service, args.webdataset, args.shard_size, model)
        written = sum(shard.samples for shard in shards)
        print(
            f"wrote {written} sample(s) in {len(shards)} shard(s) and manifest.json to "
            f"{args.webdataset}"
        )
    if written == 0:
        print("captioner: nothing to export" + (f" by {model}" if model else ""), file=sys.stderr)
        return 1
    return 0
