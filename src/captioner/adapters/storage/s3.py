"""Image and thumbnail stores on S3-compatible object storage (AWS S3, Ceph RGW, Garage, MinIO)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from captioner.domain.downloads import content_disposition
from captioner.domain.errors import CaptionerError, StorageFull, StorageUnavailable
from captioner.domain.layout import StoredPath, content_type_of, thumbnail_digest, thumbnail_name
from captioner.domain.model import ImageDigest, Readiness, Thumbnail

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import HeadObjectOutputTypeDef

log = logging.getLogger(__name__)

THUMBNAIL_SUFFIX = ".thumbnail.webp"
THUMBNAIL_CONTENT_TYPE = "image/webp"
DEFAULT_TIMEOUT_S = 5.0
# S3 takes one PUT up to 5 GB, but a single request that dies at 90% starts over: above this
# size the bytes go up in parts. Parts are read one at a time, so memory stays at one part.
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_BYTES = 8 * 1024 * 1024
_READ_BUFFER = 1024 * 1024
# A quota refusal is only seen when writing; /readyz repeats it for this long afterwards.
_FULL_REMEMBERED_S = 60.0

# Codes S3-compatible servers use for "no room": Ceph RGW and MinIO bucket quotas, MinIO's
# drive threshold, and the plain WebDAV-style 507.
_FULL_CODES = {
    "QuotaExceeded",
    "XMinioAdminBucketQuotaExceeded",
    "XMinioStorageFull",
    "InsufficientStorage",
    "StorageFull",
}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
# Refusals no retry cures: the bucket, the keys or their permissions must change (a HEAD
# request has no body, so a refused HeadBucket/HeadObject says only "403").
_NO_BUCKET_CODES = {"NoSuchBucket"}
_DENIED_CODES = {
    "403",
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
_MISCONFIGURED_CODES = {"InvalidBucketName", "PermanentRedirect", "AuthorizationHeaderMalformed"}


@dataclass(frozen=True)
class BucketLocation:
    """Where the bytes go: ``s3://bucket/prefix`` split into bucket and key prefix."""

    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> BucketLocation:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"store_url must look like s3://bucket/prefix, got {url!r}")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def make_s3_client(timeout_s: float = DEFAULT_TIMEOUT_S) -> S3Client:
    """An S3 client configured the standard boto3 way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, profiles, instance roles...).

    Timeouts are short and retries few: a dead endpoint must turn into a 503 well within an
    HTTP request's time, not hang a server thread for minutes. Checksums are only sent where
    S3 requires them, since several S3-compatible servers refuse the newer default ones.
    """
    # Imported only here: urllib3 (under boto3 and botocore's config) adds process-wide
    # warning filters at import, which hosts that never use S3 must not get from us.
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        # Presigned links signed with SigV4: the only kind newer AWS regions and most
        # S3-compatible servers accept (botocore would sign them with SigV2 here).
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client: S3Client = boto3.session.Session().client("s3", config=config)
    return client


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
        self._full = _RecentFault()

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
                _put_create_only(
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
            return _open_object(self._client, self._location, key)

    def exists(self, path: str) -> bool:
        try:
            key = self._key(path)
        except ValueError:
            return False
        with self._faults("look up the image"):
            return _head(self._client, self._location.bucket, key) is not None

    def delete(self, path: str) -> None:
        key = self._key(path)
        with self._faults("delete the image"):
            self._client.delete_object(Bucket=self._location.bucket, Key=key)

    def paths(self) -> Iterator[str]:
        with self._faults("list the images"):
            for key, _ in _list(self._client, self._location, self._list_page_size):
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
            head = _head(self._client, self._location.bucket, key)
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
                    if _code(error) not in _NOT_FOUND_CODES:
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
        code = _code(error)
        if code in ("PreconditionFailed", "412"):
            return True
        # Another replica is completing the same key right now; its bytes are ours.
        return code == "ConditionalRequestConflict" and (
            _head(self._client, self._location.bucket, key) is not None
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
            stream = _open_object(self._client, self._location, self.key_of(digest))
        except FileNotFoundError:
            return None
        except (ClientError, BotoCoreError) as error:
            raise _fault_or_raise(
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
            if _code(error) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                # The gallery still gets its preview; it is kept on a later request.
                log.warning(
                    "thumbnail not kept: %s",
                    _fault_or_raise(error, "keep", self._location, self._endpoint),
                )
        except BotoCoreError as error:
            log.warning(
                "thumbnail not kept: %s",
                _fault_or_raise(error, "keep", self._location, self._endpoint),
            )
        return Thumbnail(io.BytesIO(data), THUMBNAIL_CONTENT_TYPE)

    def digests(self) -> Iterator[ImageDigest]:
        try:
            for key, _ in _list(self._client, self._location, 1000):
                digest = thumbnail_digest(key[len(self._location.prefix) :], THUMBNAIL_SUFFIX)
                if digest is not None:
                    yield digest
        except (ClientError, BotoCoreError) as error:
            raise _fault_or_raise(
                error, "list the thumbnails", self._location, self._endpoint
            ) from error

    def delete(self, digest: ImageDigest) -> None:
        try:
            self._client.delete_object(Bucket=self._location.bucket, Key=self.key_of(digest))
        except (ClientError, BotoCoreError) as error:
            raise _fault_or_raise(
                error, "delete the thumbnail", self._location, self._endpoint
            ) from error


def endpoint_of(client: S3Client) -> str:
    """The endpoint a client talks to, for messages (AWS S3's regional one when unset)."""
    return str(client.meta.endpoint_url)


def missing_bucket(location: BucketLocation, endpoint: str = "") -> StorageUnavailable:
    """The bucket of ``store_url`` does not exist: permanent until someone creates it."""
    at = f" at {endpoint}" if endpoint else ""
    flag = f" --endpoint-url {endpoint}" if endpoint and "amazonaws.com" not in endpoint else ""
    return StorageUnavailable(
        f"Bucket {location.bucket!r} does not exist{at} (NoSuchBucket; store_url "
        f"{location}). Create it once: aws{flag} s3 mb s3://{location.bucket} (or with the "
        "storage's own console), or correct store_url.",
        retry_after_s=None,
    )


def s3_fault(
    error: ClientError | BotoCoreError,
    action: str,
    location: BucketLocation,
    endpoint: str = "",
) -> CaptionerError | None:
    """The domain error an S3 failure means; None for "no such key" (the caller decides).

    Refusals only a change of settings cures (no such bucket, refused keys, a wrong
    region) are permanent: ``retry_after_s=None``, and the message says what to change.
    """
    if isinstance(error, NoCredentialsError):
        return StorageUnavailable(
            f"Cannot {action}: no credentials for {location}. Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or a profile or role) for the server.",
            retry_after_s=30,
        )
    if isinstance(error, BotoCoreError):
        return StorageUnavailable(
            f"Cannot {action}: the object storage at {location} does not answer ({error}). "
            "Stored images are served again once it is back; retry shortly.",
            retry_after_s=10,
        )
    code = _code(error)
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = error.response.get("Error", {}).get("Message", "") or code
    if code in _NOT_FOUND_CODES:
        return None
    at = f" at {endpoint}" if endpoint else ""
    if code in _NO_BUCKET_CODES:
        return missing_bucket(location, endpoint)
    if code in _DENIED_CODES:
        return StorageUnavailable(
            f"Cannot {action}: the object storage{at} refused access to bucket "
            f"{location.bucket!r} ({code}: {message}). Check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or the profile or role) and what they may do in the "
            "bucket; then restart.",
            retry_after_s=None,
        )
    if code in _MISCONFIGURED_CODES:
        return StorageUnavailable(
            f"Cannot {action}: the object storage{at} refused bucket {location.bucket!r} "
            f"({code}: {message}). Check store_url, AWS_ENDPOINT_URL and AWS_DEFAULT_REGION "
            "(the bucket's region); then restart.",
            retry_after_s=None,
        )
    if code in _FULL_CODES or status == 507:
        return StorageFull(
            f"Storage is full: {location} refused to {action} ({code}: {message}). "
            "Raise the bucket quota or free space, then upload again."
        )
    if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
        return StorageUnavailable(
            f"Cannot {action}: the object storage at {location} is busy or failing "
            f"({code}: {message}). Retry shortly.",
            retry_after_s=5,
        )
    return StorageUnavailable(
        f"Cannot {action}: {location} refused ({code}: {message}). "
        "Check the bucket name, its permissions and the server's credentials.",
        retry_after_s=30,
    )


def _fault_or_raise(
    error: ClientError | BotoCoreError, action: str, location: BucketLocation, endpoint: str
) -> CaptionerError:
    fault = s3_fault(error, action, location, endpoint)
    if fault is None:
        raise error
    return fault


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _head(client: S3Client, bucket: str, key: str) -> HeadObjectOutputTypeDef | None:
    """The object's metadata, or None when there is no such object."""
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _code(error) in _NOT_FOUND_CODES:
            return None
        raise


def _list(client: S3Client, location: BucketLocation, page_size: int) -> Iterator[tuple[str, Any]]:
    """(key, LastModified) of every object under the prefix, page by page."""
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=location.bucket,
        Prefix=location.prefix,
        PaginationConfig={"PageSize": page_size},
    )
    for page in pages:
        for item in page.get("Contents", []):
            yield item["Key"], item["LastModified"]


def _put_create_only(
    client: S3Client,
    bucket: str,
    key: str,
    content: BinaryIO,
    content_type: str,
    multipart_threshold: int,
    part_bytes: int,
) -> None:
    """Upload ``content`` from its start under ``key`` unless ``key`` exists (then 412).

    Small files go in one PUT streamed from the (spooled) file; big ones in parts, one part
    in memory at a time. boto3's managed transfer (upload_fileobj) does not pass IfNoneMatch
    on to CompleteMultipartUpload, so the parts are sent here.
    """
    content.seek(0, os.SEEK_END)
    size = content.tell()
    content.seek(0)
    if size <= multipart_threshold:
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=content,
            ContentLength=size,
            ContentType=content_type,
            IfNoneMatch="*",
        )
        return
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)[
        "UploadId"
    ]
    try:
        parts: list[Any] = []
        while chunk := content.read(part_bytes):
            number = len(parts) + 1
            sent = client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
            )
            parts.append({"ETag": sent["ETag"], "PartNumber": number})
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            IfNoneMatch="*",
        )
    except BaseException:
        # Parts of an unfinished upload are invisible but billed: drop them.
        with contextlib.suppress(ClientError, BotoCoreError):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def _open_object(client: S3Client, location: BucketLocation, key: str) -> BinaryIO:
    try:
        first = client.get_object(Bucket=location.bucket, Key=key)
    except ClientError as error:
        if _code(error) in _NOT_FOUND_CODES:
            raise FileNotFoundError(key) from None
        raise
    return io.BufferedReader(_ObjectReader(client, location, key, first), _READ_BUFFER)


class _ObjectReader(io.RawIOBase):
    """An object's bytes as a seekable stream: read in order from one GET, and a seek
    elsewhere continues with a ranged GET from there.

    Seeking to the end costs nothing (the size is known), so readers can learn the size;
    Pillow's small seeks near the start stay inside the BufferedReader's buffer.
    """

    def __init__(self, client: S3Client, location: BucketLocation, key: str, first: Any) -> None:
        super().__init__()
        self._client = client
        self._location = location
        self._key = key
        self.size = int(first["ContentLength"])
        self._etag = str(first["ETag"])
        self._body: Any = first["Body"]
        self._body_at = 0
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        if self._position >= self.size:
            return 0
        view = memoryview(buffer).cast("B")
        try:
            if self._body is None or self._body_at != self._position:
                self._reopen()
            data = self._body.read(len(view))
        except (ClientError, BotoCoreError) as error:
            # The endpoint went away (or the object changed) after the first GET: readers
            # (decoder, thumbnails, digests) get the same storage fault an open would.
            self._close_body()
            fault = s3_fault(error, "read the image", self._location, endpoint_of(self._client))
            if fault is None:
                raise FileNotFoundError(self._key) from error
            raise fault from error
        view[: len(data)] = data
        self._position += len(data)
        self._body_at += len(data)
        return len(data)

    def _reopen(self) -> None:
        self._close_body()
        # IfMatch: the rest of the bytes must come from the same object as the first ones.
        reply = self._client.get_object(
            Bucket=self._location.bucket,
            Key=self._key,
            Range=f"bytes={self._position}-",
            IfMatch=self._etag,
        )
        self._body = reply["Body"]
        self._body_at = self._position

    def _close_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


class _RecentFault:
    """Remembers the last fault of one kind for a while (thread-safe)."""

    def __init__(self, remember_s: float = _FULL_REMEMBERED_S) -> None:
        self._remember_s = remember_s
        self._lock = threading.Lock()
        self._last: tuple[float, str] | None = None

    def note(self, reason: str) -> None:
        with self._lock:
            self._last = (time.monotonic(), reason)

    def recent(self) -> str | None:
        with self._lock:
            if self._last is None or time.monotonic() - self._last[0] > self._remember_s:
                return None
            return self._last[1]
