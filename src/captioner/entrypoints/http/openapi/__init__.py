"""OpenAPI 3.1 description of the HTTP API, built from the routes' own declarations, and /docs.

Each route says what it takes and answers with ``@documented(...)`` (pydantic models for
bodies and parameters, plus headers and non-JSON content); ``openapi_document`` walks the
app's URL map, so paths, methods and path parameters come from Flask itself and a route
cannot be served without being described. A route parses its query string with
``parse_query`` (parsing.py) and the very model it documents. apispec assembles the document;
pydantic writes the JSON Schemas (draft 2020-12, the dialect of OpenAPI 3.1).

``declare`` holds what routes write, ``document`` builds /openapi.json, ``docs`` serves it.
"""
