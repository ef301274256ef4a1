"""`captioner list`, `delete`, `check` and `export`: the stored library, read and tidied."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from captioner.config import Settings, canonical_model_name
from captioner.domain.errors import ImageNotFound
from captioner.domain.service import CaptionService
from captioner.domain.storage_check import StorageProblem
from captioner.entrypoints.cli.exporting import export_files, record_format
from captioner.entrypoints.cli.services import opened_service
from captioner.entrypoints.serialize import listed_json, record_json
from captioner.exports import export_imagefolder


def export(settings: Settings, args: argparse.Namespace) -> int:
    with opened_service(settings, args, load_model=False) as service:
        return _export_from(service, settings, args)


def _export_from(service: CaptionService, settings: Settings, args: argparse.Namespace) -> int:
    if args.sidecars is not None or args.webdataset is not None:
        return export_files(service, settings, args)
    if args.hf_imagefolder is not None:
        written = export_imagefolder(
            service, args.hf_imagefolder, settings.model, settings.prompt, args.split
        )
        print(f"wrote {written} image(s) and metadata.jsonl to {args.hf_imagefolder / args.split}")
        if written == 0:
            return _nothing_matched(service, settings.model, settings.prompt)
        return 0
    model = canonical_model_name(args.model) if args.model is not None else None
    output = record_format(args)
    if output is None:
        return 2
    records = service.export(model=model, prompt=args.prompt)
    written = 0
    if output == "csv":
        writer: Any = None
        for record in records:
            written += 1
            row = record_json(record)
            row["generation"] = json.dumps(row["generation"], sort_keys=True)
            if writer is None:
                writer = csv.DictWriter(sys.stdout, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
    else:
        for record in records:
            written += 1
            sys.stdout.write(json.dumps(record_json(record)) + "\n")
    sys.stdout.flush()
    if written == 0 and (model is not None or args.prompt is not None):
        return _nothing_matched(service, model, args.prompt)
    return 0


def _nothing_matched(service: CaptionService, model: str | None, prompt: str | None) -> int:
    """A filter that matched nothing is an error a script notices (exit 1), naming what the
    library does hold so the next try can be right."""
    held: dict[str, set[str]] = {}
    for record in service.export():
        held.setdefault(record.model, set()).add(record.prompt)
    asked = " and ".join(
        part
        for part in (
            f"model {model}" if model is not None else "",
            f"prompt {prompt!r}" if prompt is not None else "",
        )
        if part
    )
    if not held:
        print(f"captioner: no captions by {asked}: the library is empty", file=sys.stderr)
        return 1
    print(f"captioner: no captions by {asked}; the library holds captions by:", file=sys.stderr)
    for name in sorted(held):
        prompts = ", ".join(repr(p) if p else "(default prompt)" for p in sorted(held[name]))
        print(f"  {name}  prompts: {prompts}", file=sys.stderr)
    return 1


def list_images(settings: Settings, args: argparse.Namespace) -> int:
    with opened_service(settings, args, load_model=False) as service:
        model = canonical_model_name(args.model) if args.model else None
        page = service.list(limit=args.limit, before=args.before, query=args.search, model=model)
    if not page.entries:
        if args.search:
            note = f"no images match {args.search!r}"
        elif args.before is not None:
            note = f"no images before id {args.before}"
        elif model:
            note = f"no images described by {model}"
        else:
            note = f"the library in {settings.data_dir.resolve()} is empty"
            if settings.database_url:
                note = "the library is empty"
        # A line for people; --json keeps stdout to JSON objects.
        print(f"captioner: {note}", file=sys.stderr if args.json else sys.stdout)
    for entry in page.entries:
        record = entry.record
        if args.json:
            print(json.dumps(listed_json(entry)))
        else:
            print(
                f"{record.id}\t{record.created_at:%Y-%m-%d %H:%M}\t{record.model}\t"
                f"{record.description}"
            )
    return 0


def delete(settings: Settings, args: argparse.Namespace) -> int:
    with opened_service(settings, args, load_model=False) as service:
        missing = []
        for image_id in args.ids:
            try:
                record = service.delete(image_id)
            except ImageNotFound as error:
                missing.append(image_id)
                print(f"captioner: {error}", file=sys.stderr)
                continue
            print(f"deleted {record.id} ({record.path})")
        if missing:
            print(
                f"captioner: {len(missing)} of {len(args.ids)} id(s) not found: "
                + " ".join(map(str, missing)),
                file=sys.stderr,
            )
            return 1
        return 0


def check(settings: Settings, args: argparse.Namespace) -> int:
    with opened_service(settings, args, load_model=False) as service:
        found: list[tuple[StorageProblem, str | None]] = []

        def report_problem(problem: StorageProblem) -> None:
            print(
                f"{problem.kind}\t{problem.path}"
                + (f"\trecord {problem.record_id}" if problem.record_id is not None else "")
            )
            found.append((problem, _sha256_of(service, problem)))

        report = service.check(
            repair=args.repair, orphan_grace_s=args.orphan_grace, on_problem=report_problem
        )
        if report.repaired:
            for problem, sha256 in found:
                print(_removal(problem, sha256))
        verdict = "no problems" if report.ok else f"{len(report.problems)} problem(s)"
        action = ", repaired" if report.repaired and not report.ok else ""
        print(
            f"checked {report.files_seen} files, {report.records_seen} records: {verdict}{action}"
        )
        return 0 if report.ok or report.repaired else 1


def _sha256_of(service: CaptionService, problem: StorageProblem) -> str | None:
    """The digest of the bytes a problem is about (read before a repair removes its record)."""
    if problem.kind == "orphan_thumbnail":
        return problem.path  # a thumbnail is named by its digest
    if problem.record_id is None:
        stem = problem.path.rsplit("/", 1)[-1].split(".", 1)[0]
        return stem if len(stem) == 64 else None  # stored files are named by their digest
    try:
        return service.get(problem.record_id).sha256
    except ImageNotFound:  # deleted meanwhile
        return None


_REMOVAL_REASONS = {
    "missing_file": "its file is missing",
    "hash_mismatch": "its file's bytes no longer match its SHA-256 (the file goes too unless "
    "another record uses it)",
    "orphan_file": "no record uses it",
    "orphan_thumbnail": "no record has those bytes",
}


def _removal(problem: StorageProblem, sha256: str | None) -> str:
    """One line saying what a repair removed and why: what, id, SHA-256 prefix, path."""
    digest = f"sha256 {sha256[:12]}" if sha256 else "sha256 unknown"
    reason = _REMOVAL_REASONS.get(problem.kind, problem.kind)
    if problem.record_id is not None:
        what = f"record {problem.record_id} ({digest}, {problem.path})"
    elif problem.kind == "orphan_thumbnail":
        what = f"thumbnail ({digest})"
    else:
        what = f"file {problem.path} ({digest})"
    return f"removed {what}: {reason}"
