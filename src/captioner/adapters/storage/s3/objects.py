"""Object IO on S3: the create-only (multipart) upload, the seekable ranged-GET reader, and
the head and list helpers the stores share."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from captioner.adapters.storage.s3.client import (
    NOT_FOUND_CODES,
    BucketLocation,
    endpoint_of,
    error_code,
    s3_fault,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import HeadObjectOutputTypeDef

# S3 takes one PUT up to 5 GB, but a single request that dies at 90% starts over: above this
# size the bytes go up in parts. Parts are read one at a time, so memory stays at one part.
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_BYTES = 8 * 1024 * 1024
_READ_BUFFER = 1024 * 1024


def head_object(client: S3Client, bucket: str, key: str) -> HeadObjectOutputTypeDef | None:
    """The object's metadata, or None when there is no such object."""
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error_code(error) in NOT_FOUND_CODES:
            return None
        raise


def list_objects(
    client: S3Client, location: BucketLocation, page_size: int
) -> Iterator[tuple[str, Any]]:
    """(key, LastModified) of every object under the prefix, page by page."""
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=location.bucket,
        Prefix=location.prefix,
        PaginationConfig={"PageSize": page_size},
    )
    for page in pages:
        for item in page.get("Contents", []):
            yield item["Key"], item["LastModified"]


def put_create_only(
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


def open_object(client: S3Client, location: BucketLocation, key: str) -> BinaryIO:
    try:
        first = client.get_object(Bucket=location.bucket, Key=key)
    except ClientError as error:
        if error_code(error) in NOT_FOUND_CODES:
            raise FileNotFoundError(key) from None
        raise
    return io.BufferedReader(ObjectReader(client, location, key, first), _READ_BUFFER)


class ObjectReader(io.RawIOBase):
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
