"""HTTP and CLI doors over fakes: routes, access, OpenAPI, pages, output."""
