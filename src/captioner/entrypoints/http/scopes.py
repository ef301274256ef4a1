"""Which API key scope each route needs: one table, by endpoint.

A route missing from the table needs ``admin``, so a new route is closed until someone
decides otherwise. The check (access.py) and the OpenAPI document both read it.
"""

from __future__ import annotations

from captioner.domain.access import Scope

SESSION_COOKIE = "captioner_session"
# None: open to anyone (probes, the page shell and its assets, the docs, signing in).
SCOPE_BY_ENDPOINT: dict[str, Scope | None] = {
    "api.healthz": None,
    "api.readyz": None,
    "pages.gallery": None,
    "static": None,
    "docs.openapi_json": None,
    "docs.swagger_ui": None,
    "docs.docs_script": None,
    "docs.swagger_asset": None,
    "access.session": None,
    "access.sign_in": None,
    "access.sign_out": None,
    "api.list_images": Scope.READ,
    "api.list_models": Scope.READ,
    "api.export_jsonl": Scope.READ,
    # Whether bytes are known tells no more than a listing's sha256s.
    "api.check_hashes": Scope.READ,
    "api.image_captions": Scope.READ,
    "api.get_image": Scope.READ,
    "api.image_file": Scope.READ,
    "pages.thumbnail": Scope.READ,
    "api.upload": Scope.UPLOAD,
    "api.delete_image": Scope.ADMIN,
    # A scraper's key: the metrics scope (or admin), never read, so it can see no image.
    "metrics.metrics_text": Scope.METRICS,
}


def scope_for(endpoint: str) -> Scope | None:
    """The scope a route needs; None when it is open to anyone."""
    return SCOPE_BY_ENDPOINT.get(endpoint, Scope.ADMIN)
