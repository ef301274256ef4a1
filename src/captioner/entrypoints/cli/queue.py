"""`captioner worker` and `captioner jobs`: caption the queue apart from the API, and see or
steer what waits in it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
from types import FrameType

from captioner.config import Settings
from captioner.domain.errors import CaptionerUnavailable
from captioner.domain.model import FAILED, PENDING, Claim, ImageRecord
from captioner.entrypoints.cli.services import opened_service
from captioner.entrypoints.serialize import record_json


def worker(settings: Settings, args: argparse.Namespace) -> int:
    """Caption the queue until SIGTERM or SIGINT; no HTTP. Liveness: its heartbeat row."""
    settings = dataclasses.replace(settings, no_model=False)  # a worker is where the model is
    stop = threading.Event()

    def finish(signum: int, frame: FrameType | None) -> None:
        stop.set()  # the batch in hand is written first, then the loop ends

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    with opened_service(settings, args) as service:
        print(f"captioner: loading model {settings.model}...", file=sys.stderr, flush=True)
        try:
            readiness = service.wait_until_ready()
        except CaptionerUnavailable as failed:  # failed for good: a setting must change
            print(f"captioner: {failed}", file=sys.stderr)
            return 1
        if not readiness.ready:  # a model server down for now: the worker waits for it
            print(f"captioner: waiting: {readiness.reason}", file=sys.stderr, flush=True)
        name = f"worker {Claim.new_owner()}"
        print(f"captioner: {name} captions the queue with {settings.model}", file=sys.stderr)
        queue_worker = service.queue_worker(name)
        queue_worker.run(stop)
        taken = queue_worker.taken
        print(f"captioner: {name} stopped after {taken} queued image(s)", file=sys.stderr)
    return 0


def jobs(settings: Settings, args: argparse.Namespace) -> int:
    """List, retry or cancel queued captions."""
    action = args.jobs_command or "list"
    with opened_service(settings, args, load_model=False) as service:
        if action == "retry":
            if (args.id is None) == (not args.failed):
                print("captioner: jobs retry takes an ID or --failed", file=sys.stderr)
                return 2
            count = service.retry(args.id)
            print(f"queued {count} failed caption(s) again")
        elif action == "cancel":
            record = service.cancel(args.id)
            print(f"cancelled image {record.id} ({record.path})")
        else:
            status = FAILED if args.failed else PENDING if args.pending else None
            for record in service.jobs(status, limit=args.limit):
                print(json.dumps(record_json(record)) if args.json else _job_line(record))
            summary = service.queue_status()
            counts = ", ".join(f"{count} {name}" for name, count in sorted(summary.counts.items()))
            print(f"queue: {counts}; {len(summary.workers)} worker(s) alive", file=sys.stderr)
    return 0


def _job_line(record: ImageRecord) -> str:
    failure = f"\t{record.failure}" if record.failure else ""
    return (
        f"{record.id}\t{record.status}\t{record.attempts}\t"
        f"{record.created_at:%Y-%m-%d %H:%M:%S}\t{record.path}{failure}"
    )
