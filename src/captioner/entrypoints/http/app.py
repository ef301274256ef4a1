"""The Flask app factory: limits, middleware and blueprints, over a container's service."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from captioner.container import Container
from captioner.entrypoints.http.access import register_access
from captioner.entrypoints.http.errors import register_error_handlers
from captioner.entrypoints.http.health import health_blueprint
from captioner.entrypoints.http.images import images_blueprint
from captioner.entrypoints.http.metrics import register_metrics
from captioner.entrypoints.http.middleware import (
    refuse_cross_site_writes,
    register_request_logging,
)
from captioner.entrypoints.http.openapi.docs import docs_blueprint
from captioner.entrypoints.http.pages import pages_blueprint
from captioner.entrypoints.http.queue import queue_blueprint, queue_figures
from captioner.entrypoints.http.uploads import UploadRequest

# Room for the multipart envelope around a file of exactly the byte limit.
_FORM_OVERHEAD = 64 * 1024
# Largest text field (and part header) kept in memory; above werkzeug's 64 KB read size.
_FORM_FIELD_BYTES = 128 * 1024


class _SchemaOrderJSON(DefaultJSONProvider):
    """Bodies keep the schemas' field order (``id`` first); Flask sorts keys by default."""

    sort_keys = False


def create_app(container: Container) -> Flask:
    """Build the WSGI app; everything it serves comes from ``container``'s service."""
    settings = container.settings()
    service = container.service()
    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + _FORM_OVERHEAD,
        # werkzeug applies this limit to every 64 KB chunk it reads, file parts included, plus
        # the few bytes it keeps back while looking for the boundary: at 64 KB exactly, most
        # photos over a few hundred KB were refused with a 413. Text fields stay small.
        MAX_FORM_MEMORY_SIZE=_FORM_FIELD_BYTES,
        MAX_FORM_PARTS=16,
        CAPTIONER_MAX_UPLOAD_BYTES=settings.max_upload_bytes,
        CAPTIONER_SPOOL_DIR=str(_spool_dir(settings.data_dir)),
    )
    app.json = _SchemaOrderJSON(app)
    app.extensions["captioner"] = container
    register_error_handlers(app)
    register_request_logging(app)
    refuse_cross_site_writes(app)
    register_metrics(app, container.metrics())
    container.metrics().watch_caption_queue(lambda: queue_figures(service))
    register_access(app, container.access(), container.failed_keys(), container.uploads_per_key())
    app.register_blueprint(images_blueprint(service))
    app.register_blueprint(health_blueprint(service))
    app.register_blueprint(queue_blueprint(service))
    app.register_blueprint(docs_blueprint())
    app.register_blueprint(pages_blueprint(service, settings.max_upload_bytes))
    return app


def _spool_dir(data_dir: Path) -> Path:
    """Where big uploads wait while they are checked: the data dir itself (see uploads.py)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir
