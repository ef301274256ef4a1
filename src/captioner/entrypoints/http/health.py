"""The probes: liveness (/healthz) and readiness (/readyz)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from captioner.domain.service import CaptionService
from captioner.entrypoints.http.openapi.declare import (
    RETRY_AFTER_UNLESS_PERMANENT,
    Reply,
    documented,
)
from captioner.entrypoints.http.schemas import Health, NotReady, Ready


def health_blueprint(service: CaptionService) -> Blueprint:
    """``GET /healthz`` and ``GET /readyz`` over ``service``; open to anyone (scopes.py)."""
    health = Blueprint("health", __name__)

    @health.get("/healthz")
    @documented(tags=("health",), replies={200: Reply("The process is alive.", Health)})
    def healthz() -> Response:
        """Liveness: the process answers."""
        return jsonify({"status": "ok"})

    @health.get("/readyz")
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

    return health
