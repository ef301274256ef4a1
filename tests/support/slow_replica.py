"""A replica whose model is slow on purpose: the real app, catalogue and store; a fake model.

Run as ``python -m tests.support.slow_replica`` with the same CAPTIONER_* settings as the
other replicas (its model answers to the same model name) and TEST_CAPTION_DELAY_S; it
serves until killed. Tests use it to hold a claim long enough to kill its owner mid-caption.
"""

from __future__ import annotations

import os

from dependency_injector import providers
from werkzeug.serving import make_server

from captioner.config import Settings
from captioner.container import build_container
from captioner.entrypoints.http import create_app
from tests.support.fakes import FakeBatchModel


def main() -> None:
    settings = Settings.load()
    container = build_container(settings)
    model = FakeBatchModel(
        model_name=settings.model, delay_s=float(os.environ["TEST_CAPTION_DELAY_S"])
    )
    container.model.override(providers.Object(model))
    server = make_server(settings.host, settings.port, create_app(container), threaded=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
