"""Image and thumbnail stores on S3-compatible object storage (AWS S3, Ceph RGW, Garage, MinIO)."""

from captioner.adapters.storage.s3.images import (
    BucketLocation,
    S3ImageStore,
    S3ThumbnailStore,
    make_s3_client,
    s3_fault,
)

__all__ = ["BucketLocation", "S3ImageStore", "S3ThumbnailStore", "make_s3_client", "s3_fault"]
