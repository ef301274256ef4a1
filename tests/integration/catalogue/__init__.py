"""Each catalogue alone on a real database, and the contract every one keeps."""
