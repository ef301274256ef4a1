"""The storage port family: image files and thumbnails on local disk or in S3-compatible storage."""
