"""GET /openapi.json, and the /docs page: Swagger UI over that document."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify
from flask import send_from_directory as _send_from_directory
from swagger_ui_bundle import swagger_ui_path

from captioner.entrypoints.http.openapi.document import openapi_document

_STATIC = Path(__file__).parents[1] / "static"
# Only what the docs page loads; everything else in the bundle stays unreachable.
_SWAGGER_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
# The page runs no inline script; Swagger UI sets inline styles and uses data: images.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def docs_blueprint() -> Blueprint:
    """GET /openapi.json, and GET /docs: Swagger UI from the swagger-ui-bundle package."""
    docs = Blueprint("docs", __name__)
    cache: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    @docs.get("/openapi.json")
    def openapi_json() -> Response:
        # The URL map is complete once the app serves: build the document once per app.
        with lock:
            if "document" not in cache:
                cache["document"] = openapi_document(current_app)
        return jsonify(cache["document"])

    @docs.get("/docs")
    def swagger_ui() -> Response:
        response = _send_from_directory(_STATIC, "docs.html", mimetype="text/html")
        response.headers["Content-Security-Policy"] = DOCS_CSP
        response.headers["Cache-Control"] = "no-cache"
        return response

    @docs.get("/docs/captioner-docs.js")
    def docs_script() -> Response:
        return _send_from_directory(_STATIC, "docs.js", max_age=300)

    @docs.get("/docs/swagger-ui/<name>")
    def swagger_asset(name: str) -> Response:
        if name not in _SWAGGER_ASSETS:
            abort(404, description="No such file of the docs page; the docs are at /docs.")
        return _send_from_directory(Path(str(swagger_ui_path)), name, max_age=86400)

    return docs
