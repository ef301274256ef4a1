"""A replica whose model is slow on purpose: the real app, catalogue and store; a fake model.

Run as ``python -m tests.support.slow_replica`` with the same CAPTIONER_* settings as the
other replicas (its model answers to the same model name) and TEST_CAPTION_DELAY_S; it
serves until killed. Tests use it to hold a claim long enough to kill its owner mid-caption.
TEST_STORE_DELETE_DELAY_S (optional) slows each file delete as a slow disk or network store
would, widening the window in which another replica's upload can meet the delete.
"""

from __future__ import annotations

import os
import time
from typing import Any

from dependency_injector import providers
from werkzeug.serving import make_server

from captioner.config import Settings
from captioner.container import build_container
from captioner.domain.ports import ImageStore
from captioner.entrypoints.http import create_app
from tests.support.fakes import FakeBatchModel


class SlowDeletes:
    """An image store whose deletes start ``delay_s`` late; everything else as the store."""

    def __init__(self, store: ImageStore, delay_s: float) -> None:
        self._store = store
        self._delay_s = delay_s

    def delete(self, path: str) -> None:
        time.sleep(self._delay_s)
        self._store.delete(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def main() -> None:
    settings = Settings.load()
    container = build_container(settings)
    model = FakeBatchModel(
        model_name=settings.model, delay_s=float(os.environ["TEST_CAPTION_DELAY_S"])
    )
    container.model.override(providers.Object(model))
    delete_delay_s = float(os.environ.get("TEST_STORE_DELETE_DELAY_S", "0"))
    if delete_delay_s:
        slow = SlowDeletes(container.image_store(), delete_delay_s)
        container.image_store.override(providers.Object(slow))
    server = make_server(settings.host, settings.port, create_app(container), threaded=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
