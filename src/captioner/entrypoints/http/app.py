"""Flask app factory: routes for upload, listing, files and health, over a container's service."""

from __future__ import annotations

import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request, send_file, url_for

from captioner.container import Container
from captioner.domain.errors import InvalidRequest, NoImageProvided
from captioner.domain.model import ImageUpload
from captioner.domain.service import DEFAULT_LIST_LIMIT, CaptionService
from captioner.entrypoints.http.errors import register_error_handlers
from captioner.entrypoints.http.pages import pages_blueprint
from captioner.entrypoints.http.uploads import UploadRequest, digest_of
from captioner.entrypoints.serialize import record_json

access_log = logging.getLogger("captioner.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Room for the multipart envelope around a file of exactly the byte limit.
_FORM_OVERHEAD = 64 * 1024
# Largest text field (and part header) kept in memory; above werkzeug's 64 KB read size.
_FORM_FIELD_BYTES = 128 * 1024


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
        JSON_SORT_KEYS=False,
    )
    app.extensions["captioner"] = container
    register_error_handlers(app)
    _register_request_logging(app)
    app.register_blueprint(api_blueprint(service))
    app.register_blueprint(pages_blueprint(service, settings.max_upload_bytes))
    return app


def api_blueprint(service: CaptionService) -> Blueprint:
    api = Blueprint("api", __name__)

    @api.post("/upload")
    def upload() -> Response:
        file = request.files.get("image")
        if file is None or (not file.filename and _is_empty(file.stream)):
            raise NoImageProvided("No image file provided")
        result = service.describe(
            ImageUpload(
                content=file.stream,  # type: ignore[arg-type]
                original_name=file.filename,
                prompt=request.form.get("prompt", ""),
                digest=digest_of(file.stream),
            )
        )
        g.sha256 = result.record.sha256
        g.duplicate = result.duplicate
        return jsonify({**record_json(result.record), "duplicate": result.duplicate})

    @api.get("/images")
    def list_images() -> Response:
        limit = _int_arg("limit", DEFAULT_LIST_LIMIT)
        before = _int_arg("before", None)
        query = request.args.get("q") or None
        page = service.list(limit=limit, before=before, query=query)
        response = jsonify([record_json(record) for record in page.records])
        if page.next_before is not None:
            next_url = url_for("api.list_images", limit=limit, before=page.next_before)
            response.headers["Link"] = f'<{next_url}>; rel="next"'
        return response

    @api.get("/images/<int:image_id>")
    def get_image(image_id: int) -> Response:
        return jsonify(record_json(service.get(image_id)))

    @api.delete("/images/<int:image_id>")
    def delete_image(image_id: int) -> Response:
        record = service.delete(image_id)
        return jsonify({"deleted": record.id})

    @api.get("/images/<int:image_id>/file")
    def image_file(image_id: int) -> Response:
        record, stream = service.open_file(image_id)
        response = send_file(
            stream,
            mimetype=record.content_type,
            etag=record.sha256,
            conditional=True,
            max_age=31536000,
            download_name=f"{record.sha256}.{record.path.rsplit('.', 1)[-1]}",
        )
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @api.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @api.get("/readyz")
    def readyz() -> Response:
        readiness = service.readiness()
        if readiness.ready:
            return jsonify({"status": "ready", "model": service.model_name})
        response = jsonify(
            {"status": "not ready", "reason": readiness.reason, "model": service.model_name}
        )
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response

    return api


def _spool_dir(data_dir: Path) -> Path:
    """Where big uploads wait while they are checked: the data dir itself (see uploads.py)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def _int_arg(name: str, default: int | None) -> Any:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, got {raw[:40]!r}.") from None


def _is_empty(stream: Any) -> bool:
    position = stream.tell()
    empty = not stream.read(1)
    stream.seek(position)
    return empty


def _register_request_logging(app: Flask) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex

    @app.after_request
    def log_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        duration_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        access_log.info(
            "%s %s %s %.1fms",
            request.method,
            request.path,
            response.status_code,
            duration_ms,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(duration_ms, 1),
                "request_id": g.get("request_id", ""),
                "sha256": g.get("sha256"),
                "duplicate": g.get("duplicate"),
            },
        )
        return response
