"""The thumbnail store on S3 (the ThumbnailStore port): each thumbnail beside its image."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from captioner.adapters.storage.s3.client import (
    BucketLocation,
    endpoint_of,
    error_code,
    fault_or_raise,
)
from captioner.adapters.storage.s3.objects import list_objects, open_object
from captioner.domain.layout import thumbnail_digest, thumbnail_name
from captioner.domain.model import ImageDigest, Thumbnail

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

THUMBNAIL_SUFFIX = ".thumbnail.webp"
THUMBNAIL_CONTENT_TYPE = "image/webp"


class S3ThumbnailStore:
    """Implements the ThumbnailStore port: ``<prefix>ab/cd/<sha256>.thumbnail.webp``, beside
    the image. ``render`` turns the original's bytes into the thumbnail's (the container
    passes the Pillow renderer, so this adapter needs no imaging library of its own)."""

    def __init__(self, client: S3Client, url: str, render: Callable[[BinaryIO], bytes]) -> None:
        self._client = client
        self._location = BucketLocation.parse(url)
        self._endpoint = endpoint_of(client)
        self._render = render

    def key_of(self, digest: ImageDigest) -> str:
        return f"{self._location.prefix}{thumbnail_name(digest, THUMBNAIL_SUFFIX)}"

    def open(self, digest: ImageDigest) -> Thumbnail | None:
        """The kept thumbnail, or None when none was made yet."""
        try:
            stream = open_object(self._client, self._location, self.key_of(digest))
        except FileNotFoundError:
            return None
        except (ClientError, BotoCoreError) as error:
            raise fault_or_raise(
                error, "read the thumbnail", self._location, self._endpoint
            ) from error
        return Thumbnail(stream, THUMBNAIL_CONTENT_TYPE)

    def open_or_make(self, digest: ImageDigest, open_original: Callable[[], BinaryIO]) -> Thumbnail:
        kept = self.open(digest)
        if kept is not None:
            return kept
        # Replicas making the same thumbnail at once each render it; the create-only write
        # keeps the first, and every one of them serves what it rendered.
        with open_original() as original:
            data = self._render(original)
        try:
            self._client.put_object(
                Bucket=self._location.bucket,
                Key=self.key_of(digest),
                Body=data,
                ContentType=THUMBNAIL_CONTENT_TYPE,
                IfNoneMatch="*",
            )
        except ClientError as error:
            if error_code(error) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                # The gallery still gets its preview; it is kept on a later request.
                log.warning(
                    "thumbnail not kept: %s",
                    fault_or_raise(error, "keep", self._location, self._endpoint),
                )
        except BotoCoreError as error:
            log.warning(
                "thumbnail not kept: %s",
                fault_or_raise(error, "keep", self._location, self._endpoint),
            )
        return Thumbnail(io.BytesIO(data), THUMBNAIL_CONTENT_TYPE)

    def digests(self) -> Iterator[ImageDigest]:
        try:
            for key, _ in list_objects(self._client, self._location, 1000):
                digest = thumbnail_digest(key[len(self._location.prefix) :], THUMBNAIL_SUFFIX)
                if digest is not None:
                    yield digest
        except (ClientError, BotoCoreError) as error:
            raise fault_or_raise(
                error, "list the thumbnails", self._location, self._endpoint
            ) from error

    def delete(self, digest: ImageDigest) -> None:
        try:
            self._client.delete_object(Bucket=self._location.bucket, Key=self.key_of(digest))
        except (ClientError, BotoCoreError) as error:
            raise fault_or_raise(
                error, "delete the thumbnail", self._location, self._endpoint
            ) from error
