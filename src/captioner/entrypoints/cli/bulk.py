"""`captioner bulk`: a folder tree, a bucket or the catalogue, captioned once per distinct image
on Ray Data or in one process."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from captioner.bulk import ENGINES, RAY_MISSING, ray_installed, run_bulk
from captioner.config import Settings


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    bulk = commands.add_parser(
        "bulk",
        parents=[common],
        help="caption a folder tree, a bucket or the catalogue on Ray (or in one process)",
        description="Caption every image of SOURCE that the catalogue does not know for the "
        "model and prompt: a folder (walked), s3://bucket/prefix, or catalogue: (the stored "
        "images, e.g. with another --model). Known bytes are answered from one lookup per "
        "batch; a run stopped and started again does only what is left.",
    )
    bulk.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="folder, s3://bucket/prefix or catalogue:"
    )
    bulk.add_argument(
        "--engine",
        choices=ENGINES,
        help="ray (Ray Data, `pip install 'captioner[ray]'`) or local (one process); "
        "default ray when installed, else local",
    )
    bulk.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster (default: RAY_ADDRESS, else a local Ray)",
    )
    bulk.add_argument(
        "--model", help="Hugging Face model id, local directory or openai:NAME (CAPTIONER_MODEL)"
    )
    bulk.add_argument("--prompt", help="caption with this prompt (CAPTIONER_PROMPT)")
    bulk.add_argument("--actors", type=int, default=1, help="model actors on Ray (default 1)")
    bulk.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs each model actor takes (default 0)"
    )
    bulk.add_argument(
        "--cpus-per-actor", type=float, default=1.0, help="CPUs each model actor takes (default 1)"
    )
    bulk.add_argument(
        "--parquet",
        type=Path,
        metavar="DIR",
        help="also write sha256, path, caption and provenance to DIR as Parquet",
    )


def bulk(settings: Settings, args: argparse.Namespace) -> int:
    engine = args.engine or ("ray" if ray_installed() else "local")
    if engine == "ray" and not ray_installed():
        print(f"captioner: {RAY_MISSING}", file=sys.stderr)
        return 2
    if settings.compile == "background":  # a run ends before a background compile pays off
        settings = dataclasses.replace(settings, compile="off")
    try:
        summary = run_bulk(
            args.sources,
            settings,
            engine=engine,
            containers=args.containers,
            ray_address=args.ray_address,
            parquet=args.parquet,
            actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor,
        )
    except FileNotFoundError as error:
        print(f"captioner: {error}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(f"captioner: {line}", file=sys.stderr)
    return 1 if summary.failed else 0
