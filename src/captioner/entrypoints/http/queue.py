"""The queue route: GET /queue, what is waiting for a caption and who works on it."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from captioner.domain.errors import CaptionerError, CatalogueUnavailable
from captioner.domain.model import QueueStatus
from captioner.domain.service import CaptionService
from captioner.entrypoints.http.openapi.declare import Reply, documented, error_replies
from captioner.entrypoints.http.schemas import QueueOut


def queue_json(status: QueueStatus) -> dict[str, object]:
    """The queue as a :class:`QueueOut` body (the CLI's `jobs` prints the same)."""
    return QueueOut.model_validate(
        {
            "counts": dict(status.counts),
            "pending": status.pending,
            "oldest_pending_age_s": status.oldest_pending_age_s,
            "workers_alive": len(status.workers),
            "workers": [
                {"name": w.name, "model": w.model, "seen_s_ago": round(w.seen_s_ago, 3)}
                for w in status.workers
            ],
        }
    ).model_dump(mode="json")


def queue_figures(service: CaptionService) -> tuple[float, float]:
    """Pending captions and the oldest one's age in s, for the gauges; NaN when the catalogue
    cannot say (its readiness tells why)."""
    try:
        status = service.queue_status(count_captioned=False)
    except CaptionerError:
        return float("nan"), float("nan")
    return float(status.pending), float(status.oldest_pending_age_s or 0.0)


def queue_blueprint(service: CaptionService) -> Blueprint:
    """``GET /queue`` over ``service``."""
    queue = Blueprint("queue", __name__)

    @queue.get("/queue")
    @documented(
        tags=("queue",),
        replies={
            200: Reply("The caption queue now.", QueueOut),
            **error_replies(CatalogueUnavailable),
        },
    )
    def queue_status() -> Response:
        """Counts by status, the oldest pending caption's age, and the workers alive."""
        return jsonify(queue_json(service.queue_status()))

    return queue
