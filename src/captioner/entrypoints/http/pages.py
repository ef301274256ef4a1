"""The gallery page people use in a browser, and the thumbnails it shows."""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request

from captioner.domain.errors import ImageNotFound, InvalidImage, StorageUnavailable
from captioner.domain.model import Readiness
from captioner.domain.rules import MAX_PROMPT_CHARS
from captioner.domain.service import CaptionService
from captioner.entrypoints.http.files import send_stream
from captioner.entrypoints.http.openapi import (
    BINARY,
    CACHE_CONTROL,
    VARY,
    Header,
    Reply,
    documented,
    error_replies,
)

PAGE_SIZE = 30
# Scripts, styles, images and fetches from this service only; nothing inline, no plugins,
# no framing. blob: images are the local previews of files being uploaded.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
THUMBNAIL_ETAG = Header(
    "ETag", "The image's SHA-256 followed by `-thumbnail`, quoted.", required=True
)


def pages_blueprint(service: CaptionService, max_upload_bytes: int) -> Blueprint:
    """``GET /`` (the gallery) and ``GET /images/<id>/thumbnail``, over ``service``."""
    pages = Blueprint("pages", __name__)

    @pages.get("/")
    def gallery() -> Response:
        model = service.model_readiness()
        html = render_template(
            "gallery.html",
            model=service.model_name,
            model_state=_model_state(model),
            model_reason=model.reason,
            query=request.args.get("q", ""),
            page_size=PAGE_SIZE,
            max_upload_bytes=max_upload_bytes,
            max_upload_mb=f"{max_upload_bytes / (1024 * 1024):g}",
            max_prompt_chars=MAX_PROMPT_CHARS,
        )
        response = Response(html, mimetype="text/html")
        # The page itself changes with every upload; the data comes from /images anyway.
        response.headers["Cache-Control"] = "no-cache"
        return response

    @pages.get("/images/<int:image_id>/thumbnail")
    @documented(
        tags=("images",),
        replies={
            200: Reply(
                "A WebP preview, at most 320 pixels a side. When the service keeps no "
                "thumbnails, the original image stands in, with its own content type.",
                media={"image/webp": BINARY},
                headers=(THUMBNAIL_ETAG, CACHE_CONTROL, VARY),
            ),
            304: Reply("The client's copy (If-None-Match) is current.", headers=(THUMBNAIL_ETAG,)),
            **error_replies(ImageNotFound, InvalidImage, StorageUnavailable),
        },
    )
    def thumbnail(image_id: int) -> Response:
        """A small preview of the image, made the first time it is asked for."""
        record, preview = service.open_thumbnail(image_id)
        # An id always names the same bytes (ids are never reused), so the preview never changes.
        return send_stream(
            preview.content, mimetype=preview.content_type, etag=f"{record.sha256}-thumbnail"
        )

    @pages.after_request
    def security_headers(response: Response) -> Response:
        if response.mimetype == "text/html":
            response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            response.headers["Referrer-Policy"] = "same-origin"
            response.headers["X-Frame-Options"] = "DENY"
        return response

    return pages


def _model_state(model: Readiness) -> str:
    """``ready``, ``loading`` (uploads wait for it) or ``failed`` (uploads are refused until
    the server restarts with a model that loads): what the page shows above the upload form."""
    if model.ready:
        return "ready"
    return "failed" if model.permanent else "loading"
