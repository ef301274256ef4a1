"""What the app does around every request: request id and access log, nosniff, and the
refusal of cross-site writes."""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import urlsplit

from flask import Flask, Response, g, request
from werkzeug.exceptions import Forbidden

access_log = logging.getLogger("captioner.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str) -> str:
    """Control characters escaped, so a crafted path cannot forge extra log lines."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def refuse_cross_site_writes(app: Flask) -> None:
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


def register_request_logging(app: Flask) -> None:
    """Give every request an id and log it, with nosniff on every answer."""

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
