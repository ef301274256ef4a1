"""GET /openapi.json: every API route as valid OpenAPI 3.1; GET /docs renders it offline."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

from openapi_spec_validator import validate
from werkzeug.routing import Rule

from captioner.domain.errors import CaptionerError, ImageNotFound, InvalidRequest
from captioner.entrypoints.http.errors import STATUS_BY_ERROR, status_of
from captioner.entrypoints.http.openapi.declare import error_replies
from captioner.entrypoints.http.schemas import MAX_ID
from tests.support.fakes import fake_image
from tests.unit.conftest import FakeWorld

# Routes that are not part of the API: the documents themselves and HTML pages. Anything
# under /images is API, whichever blueprint serves it.
_NOT_API = ("static", "docs.", "pages.")


def is_api(rule: Rule) -> bool:
    return rule.rule.startswith("/images") or not rule.endpoint.startswith(_NOT_API)


def document(world: FakeWorld) -> dict[str, Any]:
    response = world.client.get("/openapi.json")
    assert response.status_code == 200
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield path, method, operation


def test_openapi_document_is_valid_openapi_3_1(fake_world: FakeWorld) -> None:
    spec = document(fake_world)

    validate(spec)
    assert spec["openapi"] == "3.1.0"


def test_every_api_route_and_method_is_described(fake_world: FakeWorld) -> None:
    spec = document(fake_world)

    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in fake_world.app.url_map.iter_rules()
        if is_api(rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    described = {(path, method) for path, method, _ in operations(spec)}
    assert served == described
    assert ("/upload", "post") in described
    assert ("/metrics", "get") in described
    assert ("/images/{image_id}/thumbnail", "get") in described


def test_thumbnail_documents_webp_content_caching_and_not_found(fake_world: FakeWorld) -> None:
    thumbnail = document(fake_world)["paths"]["/images/{image_id}/thumbnail"]["get"]

    ok = thumbnail["responses"]["200"]
    assert ok["content"] == {"image/webp": {"schema": {"type": "string", "format": "binary"}}}
    assert {"ETag", "Cache-Control"} <= set(ok["headers"])
    assert "ETag" in thumbnail["responses"]["304"]["headers"]
    assert "404" in thumbnail["responses"]


class UnlistedError(CaptionerError):
    """A domain error STATUS_BY_ERROR does not name."""


class UnlistedInvalidRequest(InvalidRequest):
    """A kind of invalid request, named by its parent only."""


def test_documented_error_statuses_are_the_ones_the_handlers_answer_with() -> None:
    for error in (*STATUS_BY_ERROR, UnlistedError, UnlistedInvalidRequest):
        answered = status_of(error("boom"))

        assert set(error_replies(error)) == {answered}, error
    assert set(error_replies(UnlistedError)) == {400}
    assert set(error_replies(ImageNotFound)) == {404}


def test_ids_are_documented_up_to_sqlites_largest_integer(fake_world: FakeWorld) -> None:
    spec = document(fake_world)
    listing = spec["paths"]["/images"]["get"]

    before = next(p for p in listing["parameters"] if p["name"] == "before")
    assert before["schema"]["minimum"] == 1
    assert before["schema"]["maximum"] == MAX_ID
    for path, item in spec["paths"].items():
        for parameter in item.get("parameters", []):
            if parameter["schema"]["type"] == "integer":
                assert parameter["schema"]["maximum"] == MAX_ID, path


def test_a_cursor_beyond_the_largest_id_is_refused_by_the_query_model(
    fake_world: FakeWorld,
) -> None:
    largest = fake_world.client.get(f"/images?before={MAX_ID}")
    beyond = fake_world.client.get(f"/images?before={MAX_ID + 1}")
    zero = fake_world.client.get("/images?before=0")

    assert largest.status_code == 200
    assert beyond.status_code == 400
    assert "before" in beyond.get_json()["error"]
    assert zero.status_code == 400


def test_every_error_answer_is_the_error_shape(fake_world: FakeWorld) -> None:
    spec = document(fake_world)
    error = spec["components"]["schemas"]["ErrorBody"]

    for path, method, operation in operations(spec):
        assert "500" in operation["responses"], (path, method)
        for status, response in operation["responses"].items():
            if int(status) < 400 or (path, status) == ("/readyz", "503"):
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["type"] == "string"


def test_unavailable_answers_document_retry_after_as_absent_for_permanent_faults(
    fake_world: FakeWorld,
) -> None:
    paths = document(fake_world)["paths"]

    for path, method in (("/upload", "post"), ("/readyz", "get")):
        headers = paths[path][method]["responses"]["503"]["headers"]
        assert headers["Retry-After"].get("required", False) is False
        assert "permanent" in headers["Retry-After"]["description"]


def test_upload_is_a_multipart_form_with_a_binary_image_and_an_optional_prompt(
    fake_world: FakeWorld,
) -> None:
    spec = document(fake_world)
    upload = spec["paths"]["/upload"]["post"]

    body = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    assert form["properties"]["image"] == form["properties"]["image"] | {
        "type": "string",
        "format": "binary",
    }
    assert form["properties"]["prompt"]["type"] == "string"
    assert form["required"] == ["image"]
    assert {"200", "400", "413", "415", "422", "500", "503"} <= set(upload["responses"])


def test_listing_documents_its_query_parameters_and_the_link_header(
    fake_world: FakeWorld,
) -> None:
    listing = document(fake_world)["paths"]["/images"]["get"]

    parameters = {parameter["name"]: parameter for parameter in listing["parameters"]}
    assert set(parameters) == {"limit", "before", "q", "model"}
    assert all(parameter["in"] == "query" for parameter in parameters.values())
    assert (
        parameters["limit"]["schema"] | {"minimum": 1, "maximum": 1000}
        == (parameters["limit"]["schema"])
    )
    assert "Link" in listing["responses"]["200"]["headers"]


def test_image_file_documents_binary_content_and_not_modified(fake_world: FakeWorld) -> None:
    item = document(fake_world)["paths"]["/images/{image_id}/file"]
    file = item["get"]

    assert file["responses"]["200"]["content"] == {
        "image/*": {"schema": {"type": "string", "format": "binary"}}
    }
    assert "304" in file["responses"]
    assert item["parameters"] == [
        {
            "name": "image_id",
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
        }
    ]


def test_query_parameters_are_parsed_by_the_model_that_documents_them(
    fake_world: FakeWorld,
) -> None:
    too_many = fake_world.client.get("/images?limit=1001")
    blank = fake_world.client.get("/images?limit=&before=&q=")

    assert too_many.status_code == 400
    assert "limit" in too_many.get_json()["error"]
    assert blank.status_code == 200


def test_repeated_or_unknown_query_parameters_are_refused_not_guessed(
    fake_world: FakeWorld,
) -> None:
    repeated = fake_world.client.get("/images?limit=2&limit=3")
    typo = fake_world.client.get("/images?limt=2")

    assert repeated.status_code == 400
    assert repeated.get_json()["error"].startswith("limit: given more than once")
    assert typo.status_code == 400
    assert "limt" in typo.get_json()["error"]


def test_an_upload_with_two_prompts_or_two_images_is_refused(fake_world: FakeWorld) -> None:
    def image(name: str) -> tuple[io.BytesIO, str]:
        return io.BytesIO(fake_image(name)), f"{name}.png"

    two_prompts = fake_world.client.post(
        "/upload", data={"image": image("cat"), "prompt": ["a", "b"]}
    )
    two_images = fake_world.client.post("/upload", data={"image": [image("cat"), image("dog")]})

    assert two_prompts.status_code == 400
    assert two_images.status_code == 400
    assert "one image" in two_images.get_json()["error"]
    assert fake_world.repository.rows == {}


def test_each_answer_of_the_document_carries_its_own_request_id(fake_world: FakeWorld) -> None:
    first = fake_world.client.get("/openapi.json", headers={"X-Request-ID": "first"})
    second = fake_world.client.get("/openapi.json", headers={"X-Request-ID": "second"})

    assert first.headers["X-Request-ID"] == "first"
    assert second.headers["X-Request-ID"] == "second"
    assert first.get_json() == second.get_json()


def test_docs_page_runs_swagger_ui_from_local_assets_without_inline_script(
    fake_world: FakeWorld,
) -> None:
    page = fake_world.client.get("/docs", buffered=True)
    html = page.get_data(as_text=True)

    assert page.status_code == 200
    assert page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy  # no inline script, nothing from elsewhere
    assert "http://" not in html
    assert "https://" not in html
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 4
    for asset in assets:
        served = fake_world.client.get(f"/{asset}", buffered=True)
        assert served.status_code == 200, asset
        if asset.endswith(".js"):
            assert served.mimetype in {"text/javascript", "application/javascript"}
    bundle = fake_world.client.get("/docs/swagger-ui/swagger-ui-bundle.js", buffered=True)
    assert b"SwaggerUIBundle" in bundle.data
    script = fake_world.client.get("/docs/captioner-docs.js", buffered=True).get_data(as_text=True)
    assert "validatorUrl: null" in script


def test_docs_serves_only_the_swagger_ui_files_it_needs(fake_world: FakeWorld) -> None:
    for name in ("index.html", "swagger-initializer.js", "..%2F__init__.py"):
        assert fake_world.client.get(f"/docs/swagger-ui/{name}").status_code == 404


def test_the_document_describes_the_metrics_scope(fake_world: FakeWorld) -> None:
    spec = document(fake_world)
    session = spec["components"]["schemas"]["SessionState"]["properties"]

    assert spec["paths"]["/metrics"]["get"]["security"][0] == {"bearerKey": ["metrics"]}
    assert "metrics" in spec["components"]["securitySchemes"]["bearerKey"]["description"]
    assert "metrics" in session["allows"]["items"]["enum"]


def test_image_bytes_document_their_cache_policy_and_download_name(fake_world: FakeWorld) -> None:
    paths = document(fake_world)["paths"]
    file_headers = paths["/images/{image_id}/file"]["get"]["responses"]["200"]["headers"]
    thumbnail_headers = paths["/images/{image_id}/thumbnail"]["get"]["responses"]["200"]["headers"]

    assert {"Cache-Control", "Vary", "Content-Disposition"} <= set(file_headers)
    assert {"Cache-Control", "Vary"} <= set(thumbnail_headers)
    assert "private" in file_headers["Cache-Control"]["description"]
    assert "filename*" in file_headers["Content-Disposition"]["description"]


def test_the_error_body_documents_the_upload_hint(fake_world: FakeWorld) -> None:
    error = document(fake_world)["components"]["schemas"]["ErrorBody"]

    assert error["properties"]["hint"]["type"] == "string"
    assert error["required"] == ["error"]


def test_query_parameters_carry_the_examples_their_errors_quote(fake_world: FakeWorld) -> None:
    listing = document(fake_world)["paths"]["/images"]["get"]
    examples = {p["name"]: p["schema"].get("examples") for p in listing["parameters"]}
    refused = fake_world.client.get("/images?limit=zero").get_json()["error"]

    assert examples["limit"] == [20]
    assert "e.g. limit=20" in refused
