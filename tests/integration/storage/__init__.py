"""Each image and thumbnail store alone on a real disk or S3 (moto)."""
