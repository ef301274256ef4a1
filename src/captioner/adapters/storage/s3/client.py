"""The S3 client, where the bytes go (BucketLocation), and what S3 failures mean in the
domain's terms (s3_fault)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from captioner.domain.errors import CaptionerError, StorageFull, StorageUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DEFAULT_TIMEOUT_S = 5.0
# A quota refusal is only seen when writing; /readyz repeats it for this long afterwards.
FULL_REMEMBERED_S = 60.0
# Codes S3-compatible servers use for "no room": Ceph RGW and MinIO bucket quotas, MinIO's
# drive threshold, and the plain WebDAV-style 507.
_FULL_CODES = {
    "QuotaExceeded",
    "XMinioAdminBucketQuotaExceeded",
    "XMinioStorageFull",
    "InsufficientStorage",
    "StorageFull",
}
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
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
    code = error_code(error)
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = error.response.get("Error", {}).get("Message", "") or code
    if code in NOT_FOUND_CODES:
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


def fault_or_raise(
    error: ClientError | BotoCoreError, action: str, location: BucketLocation, endpoint: str
) -> CaptionerError:
    fault = s3_fault(error, action, location, endpoint)
    if fault is None:
        raise error
    return fault


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class RecentFault:
    """Remembers the last fault of one kind for a while (thread-safe)."""

    def __init__(self, remember_s: float = FULL_REMEMBERED_S) -> None:
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
