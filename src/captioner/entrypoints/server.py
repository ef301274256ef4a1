"""Production server for `captioner serve`: gunicorn, one process with threads, one model copy."""

from __future__ import annotations

import logging
import threading
from typing import Any

from gunicorn.app.base import BaseApplication

from captioner.config import Settings
from captioner.container import Container, build_container
from captioner.domain.errors import CaptionerError
from captioner.domain.model import Claim
from captioner.domain.service import CaptionService
from captioner.entrypoints.logs import configure_logging

log = logging.getLogger(__name__)


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn's gthread worker streams request bodies to the app (no whole-body buffering),
    so the upload limit is enforced before a byte too many is read."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._container: Container | None = None
        self._queue_stop = threading.Event()
        self._queue_thread: threading.Thread | None = None
        super().__init__()

    def load_config(self) -> None:
        s = self._settings
        options: dict[str, Any] = {
            "bind": f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}",
            # One process: the model is loaded once (BLIP-base is ~1 GB in memory); threads
            # feed the batcher, which is where concurrency pays.
            "workers": 1,
            "worker_class": "gthread",
            "threads": s.threads,
            "timeout": 120,  # heartbeats come from the worker loop; captions run on other threads
            "graceful_timeout": 30,
            "keepalive": 5,
            "accesslog": None,  # we log one line per request ourselves
            "errorlog": "-",
            "loglevel": "info",
            "limit_request_line": 8190,
            # gunicorn 23+ opens a control socket in $HOME; nothing may live outside data-dir.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", self._close)

    def load(self) -> Any:
        # Imported here so the app (and the model) is built in the worker process.
        from captioner.entrypoints.http import create_app

        configure_logging(self._settings.log_format)
        container = build_container(self._settings)
        # Building the service opens what these settings choose (model worker, catalogue)
        # now, in the worker; init_resources() would also open the branches not chosen.
        service = container.service()
        self._container = container
        app = create_app(container)
        if self._settings.work_queue and not self._settings.no_model:
            # A server with a model is a worker too, taking a batch only while no upload
            # waits for the model: synchronous requests go first.
            worker = service.queue_worker(f"serve {Claim.new_owner()}", when_idle=True)
            self._queue_thread = threading.Thread(
                target=worker.run,
                args=(self._queue_stop,),
                name="captioner-queue-worker",
                daemon=True,
            )
            self._queue_thread.start()
        if self._settings.check_on_start:
            # In the background: gunicorn kills a worker whose load() outlasts its timeout,
            # and a big data dir takes a while even without re-hashing every file.
            threading.Thread(
                target=_report_storage,
                args=(container.service(),),
                name="captioner-storage-check",
                daemon=True,
            ).start()
        return app

    def _close(self, server: object, worker: object) -> None:
        """gunicorn's worker_exit hook, in the worker: let the model worker finish what it was
        given, then close the database."""
        self._queue_stop.set()
        if self._queue_thread is not None:
            self._queue_thread.join(timeout=30)  # the batch in hand is written first
        if self._container is not None:
            self._container.shutdown_resources()


def _report_storage(service: CaptionService) -> None:
    try:
        report = service.check(repair=False, verify_hashes=False)
    except CaptionerError as error:  # storage down or full at start: serve anyway, say so
        log.warning("storage check not done: %s", error)
        return
    if report.ok:
        log.info(
            "storage check: %d files, %d records, no problems",
            report.files_seen,
            report.records_seen,
        )
    else:
        for problem in report.problems:
            log.warning("storage check: %s %s", problem.kind, problem.path)
        log.warning(
            "storage check found %d problem(s); run `captioner check --repair` to fix",
            len(report.problems),
        )


def serve(settings: Settings) -> None:
    configure_logging(settings.log_format)
    log.info("serving on http://%s:%d with model %s", settings.host, settings.port, settings.model)
    _Gunicorn(settings).run()
