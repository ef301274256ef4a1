"""The gallery page people use in a browser, and the security headers its HTML carries."""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request

from captioner.domain.model import Readiness
from captioner.domain.rules import MAX_PROMPT_CHARS
from captioner.domain.service import CaptionService

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


def pages_blueprint(service: CaptionService, max_upload_bytes: int) -> Blueprint:
    """``GET /``, the gallery, over ``service``."""
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
