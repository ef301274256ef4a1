"""The HTTP contract over fakes: status codes, JSON shapes, pagination, error mapping."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from captioner.domain.model import Readiness
from tests.support.fakes import fake_image
from tests.support.records import RECORD_KEYS
from tests.unit.conftest import FakeWorld


def upload(world: FakeWorld, data: bytes, name: str = "photo.jpg", **form: str) -> Any:
    return world.client.post(
        "/upload",
        data={"image": (io.BytesIO(data), name), **form},
        content_type="multipart/form-data",
    )


def test_upload_answers_the_seed_contract(fake_world: FakeWorld) -> None:
    response = upload(fake_world, fake_image("cat"))

    assert response.status_code == 200
    body = response.get_json()
    assert {"description", "id", "sha256", "path", "duplicate", "model"} <= set(body)
    assert body["duplicate"] is False
    assert body["model"] == "fake-model"
    assert response.headers["X-Request-ID"]


def test_bodies_keep_the_documented_field_order_not_alphabetical(fake_world: FakeWorld) -> None:
    uploaded = upload(fake_world, fake_image("cat"))
    image_id = uploaded.get_json()["id"]
    listed = fake_world.client.get("/images")
    one = fake_world.client.get(f"/images/{image_id}")

    record_keys = RECORD_KEYS
    assert list(json.loads(one.data)) == record_keys
    assert [list(body) for body in json.loads(listed.data)] == [[*record_keys, "captions"]]
    assert list(json.loads(uploaded.data)) == [*record_keys, "duplicate"]
    assert one.data.startswith(b'{"id":')


def test_upload_of_same_bytes_answers_duplicate_from_storage(fake_world: FakeWorld) -> None:
    first = upload(fake_world, fake_image("cat")).get_json()
    second = upload(fake_world, fake_image("cat"), name="other.jpg").get_json()

    assert second["duplicate"] is True
    assert second["id"] == first["id"]
    assert second["description"] == first["description"]
    assert fake_world.captioner.call_count == 1


def test_upload_without_a_file_field_is_a_400_with_the_seed_message(fake_world: FakeWorld) -> None:
    response = fake_world.client.post("/upload", data={}, content_type="multipart/form-data")

    assert response.status_code == 400
    assert response.get_json() == {
        "error": "No image file provided",
        "hint": "Send the image as the multipart form field 'image', "
        "e.g. curl -F image=@photo.jpg http://localhost/upload",
    }


def test_a_file_under_another_field_name_is_named_in_the_hint(fake_world: FakeWorld) -> None:
    response = fake_world.client.post(
        "/upload", data={"file": (io.BytesIO(fake_image("cat")), "cat.jpg")}
    )

    body = response.get_json()
    assert response.status_code == 400
    assert body["error"] == "No image file provided"
    assert "form field 'file'" in body["hint"]
    assert "field 'image'" in body["hint"]
    assert "curl -F image=@photo.jpg" in body["hint"]


def test_a_raw_image_body_is_told_to_send_a_multipart_form(fake_world: FakeWorld) -> None:
    response = fake_world.client.post("/upload", data=fake_image("cat"), content_type="image/jpeg")

    body = response.get_json()
    assert response.status_code == 400
    assert body["error"] == "No image file provided"
    assert "Content-Type is 'image/jpeg'" in body["hint"]
    assert "multipart/form-data" in body["hint"]


def test_upload_of_a_non_image_is_a_415_and_stores_nothing(fake_world: FakeWorld) -> None:
    response = upload(fake_world, b"<html>hi</html>", name="x.jpg")

    assert response.status_code == 415
    assert "error" in response.get_json()
    assert fake_world.store.files == {}


def test_upload_over_the_size_limit_is_a_413_json(fake_world: FakeWorld) -> None:
    response = upload(fake_world, fake_image(b"x" * (2 * 1024 * 1024)))

    assert response.status_code == 413
    assert "limit" in response.get_json()["error"]


def test_upload_while_the_model_is_not_loaded_is_a_503_with_the_reason(
    fake_world: FakeWorld,
) -> None:
    fake_world.captioner.ready = Readiness(False, "model m could not be loaded: offline")

    response = upload(fake_world, fake_image("cat"))
    ready = fake_world.client.get("/readyz")

    assert response.status_code == 503
    assert "offline" in response.get_json()["error"]
    assert ready.status_code == 503
    assert "offline" in ready.get_json()["reason"]
    assert fake_world.client.get("/images").status_code == 200
    assert fake_world.client.get("/healthz").status_code == 200


def test_a_model_that_failed_to_load_is_a_permanent_503_without_retry_after(
    fake_world: FakeWorld,
) -> None:
    fake_world.captioner.ready = Readiness(
        False,
        "model m could not be loaded: no such model directory: /m -- set CAPTIONER_MODEL to "
        "a directory saved with save_pretrained, and restart",
        permanent=True,
    )

    response = upload(fake_world, fake_image("cat"))
    ready = fake_world.client.get("/readyz")

    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert "CAPTIONER_MODEL" in response.get_json()["error"]
    assert ready.status_code == 503
    assert "Retry-After" not in ready.headers
    assert ready.get_json() == {
        "status": "not ready",
        "reason": fake_world.captioner.ready.reason,
        "model": "fake-model",
        "permanent": True,
    }


def test_a_model_still_loading_is_a_503_that_says_when_to_retry(fake_world: FakeWorld) -> None:
    fake_world.captioner.ready = Readiness(False, "model m is loading")

    response = upload(fake_world, fake_image("cat"))
    ready = fake_world.client.get("/readyz")

    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert ready.status_code == 503
    assert ready.headers["Retry-After"]
    assert ready.get_json()["permanent"] is False


def test_readyz_is_200_when_model_and_storage_are_ready(fake_world: FakeWorld) -> None:
    assert fake_world.client.get("/readyz").status_code == 200


def test_images_lists_newest_first_with_a_link_to_the_next_page(fake_world: FakeWorld) -> None:
    ids = [upload(fake_world, fake_image(str(i))).get_json()["id"] for i in range(5)]

    page = fake_world.client.get("/images?limit=2")
    assert [r["id"] for r in page.get_json()] == ids[::-1][:2]
    assert 'rel="next"' in page.headers["Link"]
    next_url = page.headers["Link"].split(">")[0].lstrip("<")

    rest = fake_world.client.get(next_url)
    assert [r["id"] for r in rest.get_json()] == ids[::-1][2:4]
    row = rest.get_json()[0]
    expected = {"id", "path", "description", "sha256", "model", "created_at", "width", "height"}
    assert expected | {"content_type"} <= set(row)


def test_images_with_bad_paging_parameters_is_a_400(fake_world: FakeWorld) -> None:
    for query in ("limit=abc", "limit=0", "limit=5000", "before=-3", "before=x"):
        response = fake_world.client.get(f"/images?{query}")
        assert response.status_code == 400, query
        assert "error" in response.get_json()


def test_one_image_its_file_and_its_deletion(fake_world: FakeWorld) -> None:
    created = upload(fake_world, fake_image("cat")).get_json()

    record = fake_world.client.get(f"/images/{created['id']}")
    file = fake_world.client.get(f"/images/{created['id']}/file")
    assert record.get_json()["sha256"] == created["sha256"]
    assert file.data == fake_image("cat")
    assert file.headers["Content-Type"] == "image/png"

    assert fake_world.client.delete(f"/images/{created['id']}").status_code == 200
    assert fake_world.client.get(f"/images/{created['id']}").status_code == 404
    assert fake_world.client.get(f"/images/{created['id']}/file").status_code == 404


def test_a_record_whose_file_is_gone_is_a_404_that_says_how_to_repair(
    fake_world: FakeWorld,
) -> None:
    created = upload(fake_world, fake_image("cat")).get_json()
    fake_world.store.files.clear()

    response = fake_world.client.get(f"/images/{created['id']}/file")

    assert response.status_code == 404
    assert response.get_json()["error"] == (
        f"The file of image {created['id']} is missing. "
        "Run `captioner check --repair` on the server."
    )


def test_a_form_without_its_image_is_a_400(fake_world: FakeWorld) -> None:
    response = fake_world.client.post("/upload", data={"prompt": "a photo of"})

    assert response.status_code == 400
    assert response.get_json()["error"] == "No image file provided"


def test_unknown_routes_and_methods_answer_json(fake_world: FakeWorld) -> None:
    missing = fake_world.client.get("/nope")
    wrong = fake_world.client.get("/upload")

    assert missing.status_code == 404
    assert "error" in missing.get_json()
    assert wrong.status_code == 405
    assert "POST" in wrong.headers["Allow"]


def test_unexpected_errors_are_a_json_500_with_the_request_id(fake_world: FakeWorld) -> None:
    fake_world.captioner.unexpected = RuntimeError("secret internals")
    fake_world.app.testing = False
    response = fake_world.client.post(
        "/upload",
        data={"image": (io.BytesIO(fake_image("x")), "x.png")},
        headers={"X-Request-ID": "req-123"},
    )

    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error", "request_id": "req-123"}
    assert "secret" not in response.get_data(as_text=True)


def test_ids_too_big_for_the_database_are_a_404_not_a_500(fake_world: FakeWorld) -> None:
    huge = 10**20
    for method, url in [
        ("get", f"/images/{huge}"),
        ("get", f"/images/{huge}/file"),
        ("get", f"/images/{huge}/thumbnail"),
        ("delete", f"/images/{huge}"),
    ]:
        response = getattr(fake_world.client, method)(url)
        assert response.status_code == 404, url
        assert "error" in response.get_json()
    assert fake_world.client.get(f"/images?before={huge}").status_code == 400


def test_uploads_and_deletes_from_other_web_sites_are_refused(fake_world: FakeWorld) -> None:
    created = upload(fake_world, fake_image("cat")).get_json()
    cross_site = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    old_browser = {"Origin": "https://evil.example"}

    for headers in (cross_site, old_browser):
        posted = fake_world.client.post(
            "/upload", data={"image": (io.BytesIO(fake_image("x")), "x.png")}, headers=headers
        )
        deleted = fake_world.client.delete(f"/images/{created['id']}", headers=headers)
        assert posted.status_code == 403
        assert "other web sites" in posted.get_json()["error"]
        assert deleted.status_code == 403
    assert fake_world.captioner.call_count == 1

    same_site = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    assert upload_with(fake_world, fake_image("y"), same_site).status_code == 200
    assert fake_world.client.delete(f"/images/{created['id']}").status_code == 200


def upload_with(world: FakeWorld, data: bytes, headers: dict[str, str]) -> Any:
    return world.client.post(
        "/upload", data={"image": (io.BytesIO(data), "y.png")}, headers=headers
    )


def test_control_characters_in_a_path_cannot_forge_log_lines(
    fake_world: FakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "/x%0A2026-01-01 INFO captioner.access: DELETE /images/1 200 1.0ms"
    with caplog.at_level(logging.INFO, logger="captioner.access"):
        fake_world.client.get(forged)

    lines = [r.getMessage() for r in caplog.records if r.name == "captioner.access"]
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert "\\x0a" in lines[0]
