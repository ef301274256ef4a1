"""The doors into the service: HTTP, command line. Thin: parse, call the service, format."""
