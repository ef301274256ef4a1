"""The image routes: upload, list, search, check, export, and one image's record, file,
captions and thumbnail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, stream_with_context, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from captioner.domain.downloads import download_name
from captioner.domain.errors import (
    CaptionerBusy,
    CaptionerUnavailable,
    CaptioningFailed,
    CatalogueUnavailable,
    ImageNotFound,
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    StorageFull,
    StorageUnavailable,
    UnsupportedImageType,
)
from captioner.domain.model import PENDING, ImageUpload
from captioner.domain.service import CaptionService
from captioner.entrypoints.http.errors import NoImageProvided
from captioner.entrypoints.http.files import send_stream
from captioner.entrypoints.http.openapi.declare import (
    BINARY,
    CACHE_CONTROL,
    CONTENT_DISPOSITION,
    ETAG,
    NEXT_PAGE,
    VARY,
    Header,
    Reply,
    documented,
    error_replies,
)
from captioner.entrypoints.http.parsing import parse_body, parse_query
from captioner.entrypoints.http.schemas import (
    CaptionEdit,
    CaptionList,
    Deleted,
    HashCheck,
    HashCheckResult,
    ImageList,
    ImageListQuery,
    ImageOut,
    ModelList,
    UploadForm,
    UploadQuery,
    UploadResult,
)
from captioner.entrypoints.http.uploads import digest_of, local_path_of, missing_image_hint
from captioner.entrypoints.serialize import listed_json, record_json, upload_json

LOCATION = Header("Location", "Where the record is: /images/<id>.", required=True)
PREFERENCE_APPLIED = Header(
    "Preference-Applied", "`respond-async` (RFC 7240) when the request asked for it."
)
THUMBNAIL_ETAG = Header(
    "ETag", "The image's SHA-256 followed by `-thumbnail`, quoted.", required=True
)


def images_blueprint(service: CaptionService) -> Blueprint:
    """The image routes over ``service``; their endpoints key scopes.py's table."""
    images = Blueprint("images", __name__)

    @images.post("/upload")
    @documented(
        tags=("images",),
        form=UploadForm,
        query=UploadQuery,
        replies={
            200: Reply("The image's description (new, or from storage).", UploadResult),
            202: Reply(
                "Asked for with `Prefer: respond-async` or `?wait=false`: the image and a "
                "pending record are kept; a worker captions it (poll Location).",
                UploadResult,
                headers=(LOCATION, PREFERENCE_APPLIED),
            ),
            **error_replies(
                NoImageProvided,
                InvalidRequest,
                RequestEntityTooLarge,
                ImageTooLarge,
                UnsupportedImageType,
                InvalidImage,
                CaptioningFailed,
                CaptionerUnavailable,
                CaptionerBusy,
                CatalogueUnavailable,
                StorageFull,
                StorageUnavailable,
            ),
        },
    )
    def upload() -> Response:
        """Describe an image.

        The same bytes with the same prompt are answered from storage (`duplicate`: true)
        without running the model again. With `Prefer: respond-async` (or `?wait=false`) the
        answer comes at once: 202 with the pending record, captioned later by a worker.
        Without it the request waits for its caption; a 503 on timeout leaves the image
        queued, so sending the same bytes again finds it.
        """
        asks_async = not parse_query(UploadQuery).wait or _prefers_async()
        if len(request.files.getlist("image")) > 1 or len(request.form.getlist("prompt")) > 1:
            raise InvalidRequest("Send one image, and at most one prompt, per upload.")
        file = request.files.get("image")
        if file is None or (not file.filename and _is_empty(file.stream)):
            raise NoImageProvided("No image file provided", hint=missing_image_hint())
        upload = ImageUpload(
            content=file.stream,  # type: ignore[arg-type]
            original_name=file.filename,
            prompt=request.form.get("prompt", ""),
            digest=digest_of(file.stream),
            local_path=local_path_of(file.stream),
        )
        result = service.submit(upload) if asks_async else service.describe(upload)
        g.sha256 = result.record.sha256
        g.duplicate = result.duplicate
        response = jsonify(upload_json(result))
        if asks_async and result.record.status == PENDING:
            response.status_code = 202
            response.headers["Location"] = url_for("images.get_image", image_id=result.record.id)
        if asks_async and _prefers_async():
            response.headers["Preference-Applied"] = "respond-async"
        return response

    @images.get("/images")
    @documented(
        tags=("images",),
        query=ImageListQuery,
        replies={
            200: Reply("One page of images.", ImageList, headers=(NEXT_PAGE,)),
            **error_replies(InvalidRequest, CatalogueUnavailable),
        },
    )
    def list_images() -> Response:
        """List images, one entry per image, newest first; or search their captions.

        Each image is shown with its current caption: the configured model's with the default
        prompt, else its newest (`?model=` picks another model's). Images are ordered by their
        first upload, so a re-caption never moves or repeats one. Without `q`, pages chain
        through the Link header's `rel="next"` URL.
        """
        query = parse_query(ImageListQuery)
        page = service.list(
            limit=query.limit,
            before=query.before,
            query=query.q or None,
            model=query.model or None,
        )
        response = jsonify([listed_json(entry) for entry in page.entries])
        if page.next_before is not None:
            chosen: dict[str, Any] = {"model": query.model} if query.model else {}
            next_url = url_for(
                "images.list_images", limit=query.limit, before=page.next_before, **chosen
            )
            response.headers["Link"] = f'<{next_url}>; rel="next"'
        return response

    @images.get("/models")
    @documented(
        tags=("images",),
        replies={
            200: Reply("Every model present, by name.", ModelList),
            **error_replies(CatalogueUnavailable),
        },
    )
    def list_models() -> Response:
        """The models whose captions the catalogue holds (the values `?model=` takes)."""
        return jsonify(
            [
                {
                    "model": entry.model,
                    "images": entry.images,
                    "configured": entry.model == service.model_name,
                }
                for entry in service.models()
            ]
        )

    @images.post("/images/check")
    @documented(
        tags=("images",),
        body=HashCheck,
        replies={
            200: Reply("Known and unknown digests.", HashCheckResult),
            **error_replies(InvalidRequest),
        },
    )
    def check_hashes() -> Response:
        """Which of these files are described already.

        Hash files locally, ask here, and upload only the `unknown` ones: known means the
        current model described those bytes with the default prompt.
        """
        body = parse_body(HashCheck)
        known = service.known(body.sha256)
        return jsonify(
            {
                "known": {sha: record.id for sha, record in known.records.items()},
                "unknown": list(known.unknown),
            }
        )

    @images.get("/images/export.jsonl")
    @documented(
        tags=("images",),
        replies={
            200: Reply(
                "One JSON object per line, each shaped like an image (ImageOut), oldest first.",
                media={"application/x-ndjson": {"schema": {"type": "string"}}},
            )
        },
    )
    def export_jsonl() -> Response:
        """Every record as JSON Lines, streamed (any catalogue size, flat memory)."""

        def lines() -> Iterator[str]:
            for record in service.export():
                yield json.dumps(record_json(record)) + "\n"

        response = Response(stream_with_context(lines()), mimetype="application/x-ndjson")
        response.headers["Content-Disposition"] = 'attachment; filename="captions.jsonl"'
        return response

    @images.get("/images/<int:image_id>/captions")
    @documented(
        tags=("images",),
        replies={
            200: Reply("Every caption of the image, oldest first.", CaptionList),
            **error_replies(ImageNotFound),
        },
    )
    def image_captions(image_id: int) -> Response:
        """Every caption of an image: one record per model and prompt that described its bytes."""
        return jsonify([record_json(record) for record in service.captions(image_id)])

    @images.get("/images/<int:image_id>")
    @documented(
        tags=("images",),
        replies={
            200: Reply("The image.", ImageOut),
            **error_replies(ImageNotFound, CatalogueUnavailable),
        },
    )
    def get_image(image_id: int) -> Response:
        """One image and its description."""
        return jsonify(record_json(service.get(image_id)))

    @images.patch("/images/<int:image_id>")
    @documented(
        tags=("images",),
        body=CaptionEdit,
        replies={
            200: Reply("The person's caption, now the one shown for the image.", ImageOut),
            **error_replies(InvalidRequest, ImageNotFound, CatalogueUnavailable),
        },
    )
    def edit_image(image_id: int) -> Response:
        """Correct an image's caption.

        Keeps the text as a caption a person wrote (`source`: "person", `model`: "person"),
        shown and searched in place of the model's; the model's captions stay in
        `/images/{image_id}/captions`. A second edit replaces the first. Who wrote it is the
        API key's name (`anonymous` when keys are off), kept with the time in `generation`.
        """
        body = parse_body(CaptionEdit)
        return jsonify(record_json(service.edit(image_id, body.description, by=_editor())))

    @images.delete("/images/<int:image_id>")
    @documented(
        tags=("images",),
        replies={
            200: Reply("The image is gone.", Deleted),
            **error_replies(ImageNotFound, StorageUnavailable, CatalogueUnavailable),
        },
    )
    def delete_image(image_id: int) -> Response:
        """Delete an image: every caption of its bytes (all models and prompts), its file and
        its thumbnail."""
        record = service.delete(image_id)
        return jsonify({"deleted": record.id})

    @images.get("/images/<int:image_id>/file")
    @documented(
        tags=("images",),
        replies={
            200: Reply(
                "The image bytes as uploaded.",
                media={"image/*": BINARY},
                headers=(ETAG, CACHE_CONTROL, VARY, CONTENT_DISPOSITION),
            ),
            206: Reply("The bytes of the Range asked for.", media={"image/*": BINARY}),
            302: Reply(
                "With store_redirect_s set on an S3 store: a presigned URL of the bytes "
                "in the bucket (Location), valid that many seconds."
            ),
            304: Reply("The client's copy (If-None-Match) is current.", headers=(ETAG,)),
            **error_replies(ImageNotFound, StorageUnavailable, CatalogueUnavailable),
        },
    )
    def image_file(image_id: int) -> Response:
        """The image file itself."""
        link = service.link_to_file(image_id)
        if link is not None:
            moved = Response(status=302, headers={"Location": link})
            moved.headers["Cache-Control"] = "no-cache"  # the link expires; this id does not
            return moved
        record, stream = service.open_file(image_id)
        response = send_stream(
            stream,
            mimetype=record.content_type,
            etag=record.sha256,
            download_name=download_name(record),
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @images.get("/images/<int:image_id>/thumbnail")
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

    return images


def _prefers_async() -> bool:
    """Whether a Prefer header (RFC 7240: comma-separated, parameters after `;`, any case, may
    repeat) asks for respond-async."""
    for header in request.headers.getlist("Prefer"):
        for preference in header.split(","):
            if preference.split(";", 1)[0].strip().lower() == "respond-async":
                return True
    return False


def _editor() -> str:
    """Who an edit is by: the name of the request's key, or "anonymous" when keys are off."""
    name = g.get("api_key")
    return str(name) if name else "anonymous"


def _is_empty(stream: Any) -> bool:
    position = stream.tell()
    empty = not stream.read(1)
    stream.seek(position)
    return empty
