"""Stored bytes as HTTP responses: streamed, with Content-Length, an ETag and byte ranges."""

from __future__ import annotations

import os
from typing import BinaryIO

from flask import Response, request
from werkzeug.wsgi import wrap_file

from captioner.domain.downloads import content_disposition

IMMUTABLE = "public, max-age=31536000, immutable"


def send_stream(
    stream: BinaryIO, mimetype: str, etag: str, download_name: str | None = None
) -> Response:
    """Answer with ``stream``'s bytes, read block by block (never whole into memory).

    Unlike flask.send_file, which only sizes paths and BytesIO, any seekable stream gets a
    Content-Length and range support: a file on disk and an object in a bucket alike.
    Stored bytes never change under their name (content-addressed), so they are cached
    for good and ``etag`` (the SHA-256) validates the cached copy; behind a key the answer
    is made ``private`` (access.py), so that only the key holder's browser keeps it.
    """
    size: int | None = None
    if stream.seekable():
        size = stream.seek(0, os.SEEK_END)
        stream.seek(0)
    response = Response(
        wrap_file(request.environ, stream), mimetype=mimetype, direct_passthrough=True
    )
    if size is not None:
        response.content_length = size
    if download_name is not None:
        response.headers["Content-Disposition"] = content_disposition(download_name)
    response.set_etag(etag)
    response.headers["Cache-Control"] = IMMUTABLE
    response.make_conditional(request.environ, accept_ranges=True, complete_length=size)
    return response
