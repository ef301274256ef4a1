"""The imaging port family: decoding and checking uploads, and rendering thumbnails, on Pillow."""
