"""Flask app factory: routes for upload, listing, files and health, over a container's service."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    g,
    jsonify,
    request,
    stream_with_context,
    url_for,
)
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import Forbidden, RequestEntityTooLarge

from captioner.container import Container
from captioner.domain.downloads import download_name
from captioner.domain.errors import (
    CaptionerBusy,
    CaptionerUnavailable,
    CaptioningFailed,
    CatalogueUnavailable,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    StorageFull,
    StorageUnavailable,
    UnsupportedImageType,
)
from captioner.domain.model import ImageUpload
from captioner.domain.service import CaptionService
from captioner.entrypoints.http.access import register_access
from captioner.entrypoints.http.errors import NoImageProvided, register_error_handlers
from captioner.entrypoints.http.files import send_stream
from captioner.entrypoints.http.metrics import register_metrics
from captioner.entrypoints.http.openapi.declare import (
    BINARY,
    CACHE_CONTROL,
    CONTENT_DISPOSITION,
    ETAG,
    NEXT_PAGE,
    RETRY_AFTER_UNLESS_PERMANENT,
    VARY,
    Reply,
    documented,
    error_replies,
)
from captioner.entrypoints.http.openapi.docs import docs_blueprint
from captioner.entrypoints.http.pages import pages_blueprint
from captioner.entrypoints.http.parsing import parse_body, parse_query
from captioner.entrypoints.http.schemas import (
    CaptionList,
    Deleted,
    HashCheck,
    HashCheckResult,
    Health,
    ImageList,
    ImageListQuery,
    ImageOut,
    ModelList,
    NotReady,
    Ready,
    UploadForm,
    UploadResult,
)
from captioner.entrypoints.http.uploads import (
    UploadRequest,
    digest_of,
    local_path_of,
    missing_image_hint,
)
from captioner.entrypoints.serialize import listed_json, record_json, upload_json

access_log = logging.getLogger("captioner.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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
    _register_request_logging(app)
    _refuse_cross_site_writes(app)
    register_metrics(app, container.metrics())
    register_access(app, container.access(), container.failed_keys(), container.uploads_per_key())
    app.register_blueprint(api_blueprint(service))
    app.register_blueprint(docs_blueprint())
    app.register_blueprint(pages_blueprint(service, settings.max_upload_bytes))
    return app


def api_blueprint(service: CaptionService) -> Blueprint:
    api = Blueprint("api", __name__)

    @api.post("/upload")
    @documented(
        tags=("images",),
        form=UploadForm,
        replies={
            200: Reply("The image's description (new, or from storage).", UploadResult),
            **error_replies(
                NoImageProvided,
                InvalidRequest,
                RequestEntityTooLarge,
                ImageTooLarge,
                UnsupportedImageType,
                InvalidImage,
                CaptioningFailed,
                CaptionerUnavailable,
                CaptionerBusy,
                CatalogueUnavailable,
                StorageFull,
                StorageUnavailable,
            ),
        },
    )
    def upload() -> Response:
        """Describe an image.

        The same bytes with the same prompt are answered from storage (`duplicate`: true)
        without running the model again.
        """
        if len(request.files.getlist("image")) > 1 or len(request.form.getlist("prompt")) > 1:
            raise InvalidRequest("Send one image, and at most one prompt, per upload.")
        file = request.files.get("image")
        if file is None or (not file.filename and _is_empty(file.stream)):
            raise NoImageProvided("No image file provided", hint=missing_image_hint())
        result = service.describe(
            ImageUpload(
                content=file.stream,  # type: ignore[arg-type]
                original_name=file.filename,
                prompt=request.form.get("prompt", ""),
                digest=digest_of(file.stream),
                local_path=local_path_of(file.stream),
            )
        )
        g.sha256 = result.record.sha256
        g.duplicate = result.duplicate
        return jsonify(upload_json(result))

    @api.get("/images")
    @documented(
        tags=("images",),
        query=ImageListQuery,
        replies={
            200: Reply("One page of images.", ImageList, headers=(NEXT_PAGE,)),
            **error_replies(InvalidRequest, CatalogueUnavailable),
        },
    )
    def list_images() -> Response:
        """List images, one entry per image, newest first; or search their captions.

        Each image is shown with its current caption: the configured model's with the default
        prompt, else its newest (`?model=` picks another model's). Images are ordered by their
        first upload, so a re-caption never moves or repeats one. Without `q`, pages chain
        through the Link header's `rel="next"` URL.
        """
        query = parse_query(ImageListQuery)
        page = service.list(
            limit=query.limit,
            before=query.before,
            query=query.q or None,
            model=query.model or None,
        )
        response = jsonify([listed_json(entry) for entry in page.entries])
        if page.next_before is not None:
            chosen: dict[str, Any] = {"model": query.model} if query.model else {}
            next_url = url_for(
                "api.list_images", limit=query.limit, before=page.next_before, **chosen
            )
            response.headers["Link"] = f'<{next_url}>; rel="next"'
        return response

    @api.get("/models")
    @documented(
        tags=("images",),
        replies={
            200: Reply("Every model present, by name.", ModelList),
            **error_replies(CatalogueUnavailable),
        },
    )
    def list_models() -> Response:
        """The models whose captions the catalogue holds (the values `?model=` takes)."""
        return jsonify(
            [
                {
                    "model": entry.model,
                    "images": entry.images,
                    "configured": entry.model == service.model_name,
                }
                for entry in service.models()
            ]
        )

    @api.post("/images/check")
    @documented(
        tags=("images",),
        body=HashCheck,
        replies={
            200: Reply("Known and unknown digests.", HashCheckResult),
            **error_replies(InvalidRequest),
        },
    )
    def check_hashes() -> Response:
        """Which of these files are described already.

        Hash files locally, ask here, and upload only the `unknown` ones: known means the
        current model described those bytes with the default prompt.
        """
        body = parse_body(HashCheck)
        known = service.known(body.sha256)
        return jsonify(
            {
                "known": {sha: record.id for sha, record in known.records.items()},
                "unknown": list(known.unknown),
            }
        )

    @api.get("/images/export.jsonl")
    @documented(
        tags=("images",),
        replies={
            200: Reply(
                "One JSON object per line, each shaped like an image (ImageOut), oldest first.",
                media={"application/x-ndjson": {"schema": {"type": "string"}}},
            )
        },
    )
    def export_jsonl() -> Response:
        """Every record as JSON Lines, streamed (any catalogue size, flat memory)."""

        def lines() -> Iterator[str]:
            for record in service.export():
                yield json.dumps(record_json(record)) + "\n"

        response = Response(stream_with_context(lines()), mimetype="application/x-ndjson")
        response.headers["Content-Disposition"] = 'attachment; filename="captions.jsonl"'
        return response

    @api.get("/images/<int:image_id>/captions")
    @documented(
        tags=("images",),
        replies={
            200: Reply("Every caption of the image, oldest first.", CaptionList),
            **error_replies(ImageNotFound),
        },
    )
    def image_captions(image_id: int) -> Response:
        """Every caption of an image: one record per model and prompt that described its bytes."""
        return jsonify([record_json(record) for record in service.captions(image_id)])

    @api.get("/images/<int:image_id>")
    @documented(
        tags=("images",),
        replies={
            200: Reply("The image.", ImageOut),
            **error_replies(ImageNotFound, CatalogueUnavailable),
        },
    )
    def get_image(image_id: int) -> Response:
        """One image and its description."""
        return jsonify(record_json(service.get(image_id)))

    @api.delete("/images/<int:image_id>")
    @documented(
        tags=("images",),
        replies={
            200: Reply("The image is gone.", Deleted),
            **error_replies(ImageNotFound, StorageUnavailable, CatalogueUnavailable),
        },
    )
    def delete_image(image_id: int) -> Response:
        """Delete an image: every caption of its bytes (all models and prompts), its file and
        its thumbnail."""
        record = service.delete(image_id)
        return jsonify({"deleted": record.id})

    @api.get("/images/<int:image_id>/file")
    @documented(
        tags=("images",),
        replies={
            200: Reply(
                "The image bytes as uploaded.",
                media={"image/*": BINARY},
                headers=(ETAG, CACHE_CONTROL, VARY, CONTENT_DISPOSITION),
            ),
            206: Reply("The bytes of the Range asked for.", media={"image/*": BINARY}),
            302: Reply(
                "With store_redirect_s set on an S3 store: a presigned URL of the bytes "
                "in the bucket (Location), valid that many seconds."
            ),
            304: Reply("The client's copy (If-None-Match) is current.", headers=(ETAG,)),
            **error_replies(ImageNotFound, StorageUnavailable, CatalogueUnavailable),
        },
    )
    def image_file(image_id: int) -> Response:
        """The image file itself."""
        link = service.link_to_file(image_id)
        if link is not None:
            moved = Response(status=302, headers={"Location": link})
            moved.headers["Cache-Control"] = "no-cache"  # the link expires; this id does not
            return moved
        record, stream = service.open_file(image_id)
        response = send_stream(
            stream,
            mimetype=record.content_type,
            etag=record.sha256,
            download_name=download_name(record),
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @api.get("/healthz")
    @documented(tags=("health",), replies={200: Reply("The process is alive.", Health)})
    def healthz() -> Response:
        """Liveness: the process answers."""
        return jsonify({"status": "ok"})

    @api.get("/readyz")
    @documented(
        tags=("health",),
        replies={
            200: Reply("Uploads will be described.", Ready),
            503: Reply(
                "Uploads would be refused; reason says why.",
                NotReady,
                headers=(RETRY_AFTER_UNLESS_PERMANENT,),
            ),
        },
    )
    def readyz() -> Response:
        """Readiness: the model is loaded and storage is writable (and not full)."""
        readiness = service.readiness()
        if readiness.ready:
            body = {"status": "ready", "model": service.model_name}
            if readiness.reason:
                body["detail"] = readiness.reason
            return jsonify(body)
        response = jsonify(
            {
                "status": "not ready",
                "reason": readiness.reason,
                "permanent": readiness.permanent,
                "model": service.model_name,
            }
        )
        response.status_code = 503
        if not readiness.permanent:  # a setting must change first: asking again cannot help
            response.headers["Retry-After"] = "5"
        return response

    return api


def _spool_dir(data_dir: Path) -> Path:
    """Where big uploads wait while they are checked: the data dir itself (see uploads.py)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def _is_empty(stream: Any) -> bool:
    position = stream.tell()
    empty = not stream.read(1)
    stream.seek(position)
    return empty


def _printable(text: str) -> str:
    """Control characters escaped, so a crafted path cannot forge extra log lines."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _refuse_cross_site_writes(app: Flask) -> None:
    """Any web page could otherwise make its visitors' browsers upload to or delete from a
    captioner on their machine or network (a form POST needs no CORS preflight). Browsers say
    where a request comes from; scripts and curl send neither header and are not affected."""

    @app.before_request
    def same_origin_only() -> None:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        cross_site = site == "cross-site" or (
            site is None and origin is not None and urlsplit(origin).netloc != request.host
        )
        if cross_site:
            raise Forbidden("Requests from other web sites may not change this captioner.")


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
            _printable(request.path),
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
                "key": g.get("api_key"),  # the name of the API key used, never the key
            },
        )
        return response
