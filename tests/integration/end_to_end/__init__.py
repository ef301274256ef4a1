"""The whole service through its doors: HTTP servers, the CLI, replicas."""
