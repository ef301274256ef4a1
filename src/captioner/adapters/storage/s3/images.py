"""The image store on S3 (the ImageStore port, and FileLinks by presigned GET)."""

from __future__ import annotations

import contextlib
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
from captioner.domain.layout import StoredPath, content_type_of
from captioner.domain.model import ImageDigest, Readiness

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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
        relative = str(StoredPath(digest, extension))
        if self.exists(relative):  # same bytes stored before: skip sending them again
            return relative
        key = self._key(relative)
        content_type = content_type_of(extension)
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
                try:
                    stored = StoredPath.from_tail(key[len(self._location.prefix) :])
                except ValueError:  # not an image of ours (a thumbnail, say)
                    continue
                yield str(stored)

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
        # Keys end like the stored path (its part below uploads/): a data dir moves by copying.
        return self._location.prefix + StoredPath.parse(path).tail

    def _key_or_missing(self, path: str) -> str:
        try:
            return self._key(path)
        except ValueError:
            raise FileNotFoundError(path) from None
