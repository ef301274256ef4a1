"""The Flask HTTP API."""

from captioner.entrypoints.http.app import create_app

__all__ = ["create_app"]
