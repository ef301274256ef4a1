"""The captioning domain: value objects, the service and the ports it needs; no frameworks."""
