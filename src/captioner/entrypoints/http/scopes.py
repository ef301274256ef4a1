"""Which API key scope each route needs: one table, by endpoint.

A route missing from the table needs ``admin``, so a new route is closed until someone
decides otherwise. The check (access.py) and the OpenAPI document both read it.
"""

from __future__ import annotations

from captioner.domain.access import Scope

SESSION_COOKIE = "captioner_session"
# None: open to anyone (probes, the page shell and its assets, the docs, signing in).
SCOPE_BY_ENDPOINT: dict[str, Scope | None] = {
    "health.healthz": None,
    "health.readyz": None,
    "pages.gallery": None,
    "static": None,
    "docs.openapi_json": None,
    "docs.swagger_ui": None,
    "docs.docs_script": None,
    "docs.swagger_asset": None,
    "access.session": None,
    "access.sign_in": None,
    "access.sign_out": None,
    "images.list_images": Scope.READ,
    "images.list_models": Scope.READ,
    "images.export_jsonl": Scope.READ,
    # Whether bytes are known tells no more than a listing's sha256s.
    "images.check_hashes": Scope.READ,
    "images.image_captions": Scope.READ,
    "images.get_image": Scope.READ,
    "images.image_file": Scope.READ,
    "images.thumbnail": Scope.READ,
    "images.upload": Scope.UPLOAD,
    "queue.queue_status": Scope.READ,
    # Whoever may add captions (an upload writes one) may correct them; no new scope, so
    # every key handed out for uploading can fix what it uploaded, and read keys cannot.
    "images.edit_image": Scope.UPLOAD,
    "images.delete_image": Scope.ADMIN,
    # A scraper's key: the metrics scope (or admin), never read, so it can see no image.
    "metrics.metrics_text": Scope.METRICS,
}


def scope_for(endpoint: str) -> Scope | None:
    """The scope a route needs; None when it is open to anyone."""
    return SCOPE_BY_ENDPOINT.get(endpoint, Scope.ADMIN)
