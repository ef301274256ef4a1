"""The image store on S3 (the ImageStore port, and FileLinks by presigned GET)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from captioner.adapters.storage.s3.client import (
    NOT_FOUND_CODES,
    BucketLocation,
    RecentFault,
    endpoint_of,
    error_code,
    missing_bucket,
    s3_fault,
)
from captioner.adapters.storage.s3.objects import (
    MULTIPART_THRESHOLD,
    PART_BYTES,
    head_object,
    list_objects,
    open_object,
    put_create_only,
)
from captioner.domain.downloads import content_disposition
from captioner.domain.errors import CaptionerError, StorageFull, StorageUnavailable
from captioner.domain.model import ImageDigest, Readiness

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

UPLOADS = "uploads"

# Stored paths look like the filesystem store's (``uploads/ab/cd/<sha256>.<ext>``), so records
# are the same whichever store keeps the bytes, and a data dir moves to a bucket by copying.
_PATH = re.compile(r"^uploads/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,5})$")
_KEY_TAIL = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}\.[a-z0-9]{1,5}$")
_EXTENSION = re.compile(r"^[a-z0-9]{1,5}$")
_CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
}


class S3ImageStore:
    """Implements the ImageStore port: ``s3://bucket/<prefix>ab/cd/<sha256>.<ext>``.

    Writes are create-only (``If-None-Match: *``): two replicas storing the same bytes never
    overwrite each other, and a 412 just means the bytes are there already. An upload either
    completes whole or leaves nothing visible (S3 shows an object only once it is complete).
    """

    def __init__(
        self,
        client: S3Client,
        url: str,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_bytes: int = PART_BYTES,
        list_page_size: int = 1000,
        link_expiry_s: int = 0,
    ) -> None:
        self._client = client
        self._location = BucketLocation.parse(url)
        self._endpoint = endpoint_of(client)
        self._multipart_threshold = multipart_threshold
        self._part_bytes = part_bytes
        self._list_page_size = list_page_size
        self._link_expiry_s = link_expiry_s
        self._full = RecentFault()

    @property
    def location(self) -> BucketLocation:
        return self._location

    def save(
        self,
        digest: ImageDigest,
        content: BinaryIO,
        extension: str,
        local_path: str | None = None,  # a link into a bucket is no option: always uploaded
    ) -> str:
        if not _EXTENSION.match(extension):
            raise ValueError(f"bad extension {extension!r}")
        relative = f"{UPLOADS}/{digest.hex[:2]}/{digest.hex[2:4]}/{digest.hex}.{extension}"
        if self.exists(relative):  # same bytes stored before: skip sending them again
            return relative
        key = self._key(relative)
        content_type = _CONTENT_TYPES.get(extension, "application/octet-stream")
        with self._faults("store the image"):
            try:
                put_create_only(
                    self._client,
                    self._location.bucket,
                    key,
                    content,
                    content_type,
                    self._multipart_threshold,
                    self._part_bytes,
                )
            except ClientError as error:
                if not self._already_there(error, key):
                    raise
        return relative

    def open(self, path: str) -> BinaryIO:
        key = self._key_or_missing(path)
        with self._faults("read the image"):
            return open_object(self._client, self._location, key)

    def exists(self, path: str) -> bool:
        try:
            key = self._key(path)
        except ValueError:
            return False
        with self._faults("look up the image"):
            return head_object(self._client, self._location.bucket, key) is not None

    def delete(self, path: str) -> None:
        key = self._key(path)
        with self._faults("delete the image"):
            self._client.delete_object(Bucket=self._location.bucket, Key=key)

    def paths(self) -> Iterator[str]:
        with self._faults("list the images"):
            for key, _ in list_objects(self._client, self._location, self._list_page_size):
                tail = key[len(self._location.prefix) :]
                if _KEY_TAIL.match(tail):
                    yield f"{UPLOADS}/{tail}"

    def digest_of(self, path: str) -> ImageDigest:
        with self.open(path) as stream, self._faults("read the image"):
            return ImageDigest.of_stream(stream)

    def age_s(self, path: str) -> float:
        key = self._key_or_missing(path)
        with self._faults("look up the image"):
            head = head_object(self._client, self._location.bucket, key)
        if head is None:
            raise FileNotFoundError(path)
        return max(0.0, time.time() - head["LastModified"].timestamp())

    def link(self, path: str, content_type: str, download_name: str) -> str:
        """A presigned GET of the object (the FileLinks port), answering with these headers.

        Signing is local (no request to the endpoint), so it works while the endpoint is down;
        the URL names the endpoint the server uses, which clients must be able to reach.
        """
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self._location.bucket,
                "Key": self._key_or_missing(path),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": content_disposition(download_name),
                # private: whoever holds the link may read, but a shared cache must not
                # keep serving the bytes once the link has expired.
                "ResponseCacheControl": "private, max-age=31536000, immutable",
            },
            ExpiresIn=max(1, self._link_expiry_s),
        )
        return url

    def readiness(self) -> Readiness:
        full = self._full.recent()
        if full is not None:
            return Readiness(False, full)
        try:
            with self._faults("reach the bucket"):
                try:
                    self._client.head_bucket(Bucket=self._location.bucket)
                except ClientError as error:
                    if error_code(error) not in NOT_FOUND_CODES:
                        raise
                    # HeadBucket's 404 can only mean the bucket (there is no key in it).
                    raise missing_bucket(self._location, self._endpoint) from error
        except StorageUnavailable as error:
            return Readiness(False, str(error), permanent=error.retry_after_s is None)
        except CaptionerError as error:
            return Readiness(False, str(error))
        return Readiness.ok()

    def _already_there(self, error: ClientError, key: str) -> bool:
        """A create-only write refused because the key exists: the same bytes are stored."""
        code = error_code(error)
        if code in ("PreconditionFailed", "412"):
            return True
        # Another replica is completing the same key right now; its bytes are ours.
        return code == "ConditionalRequestConflict" and (
            head_object(self._client, self._location.bucket, key) is not None
        )

    @contextlib.contextmanager
    def _faults(self, action: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as error:
            fault = s3_fault(error, action, self._location, self._endpoint)
            if fault is None:
                raise
            if isinstance(fault, StorageFull):
                self._full.note(str(fault))
            raise fault from error

    def _key(self, path: str) -> str:
        match = _PATH.match(path)
        if match is None or match[3][:2] != match[1] or match[3][2:4] != match[2]:
            raise ValueError(f"not a stored image path: {path!r}")
        return self._location.prefix + path[len(UPLOADS) + 1 :]

    def _key_or_missing(self, path: str) -> str:
        try:
            return self._key(path)
        except ValueError:
            raise FileNotFoundError(path) from None
