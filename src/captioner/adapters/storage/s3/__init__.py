"""Image and thumbnail stores on S3-compatible object storage (AWS S3, Ceph RGW, Garage, MinIO)."""

from captioner.adapters.storage.s3.client import BucketLocation, make_s3_client, s3_fault
from captioner.adapters.storage.s3.images import S3ImageStore
from captioner.adapters.storage.s3.thumbnails import S3ThumbnailStore

__all__ = ["BucketLocation", "S3ImageStore", "S3ThumbnailStore", "make_s3_client", "s3_fault"]
