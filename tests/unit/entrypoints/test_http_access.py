"""API keys over HTTP: every route against no key, a wrong key and each scope; 401, 403, 429."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from captioner.config import Settings
from captioner.domain.access import Scope
from captioner.entrypoints.http.scopes import SCOPE_BY_ENDPOINT, scope_for
from tests.support.fakes import fake_image
from tests.unit.conftest import FakeWorld, build_fake_world


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    needs: Scope | None  # None: open to anyone
    ok: int  # the status when allowed


# One image (id 1) is stored before each request; the upload sends new bytes.
ROUTES = (
    Route("GET", "/healthz", None, 200),
    Route("GET", "/readyz", None, 200),
    Route("GET", "/", None, 200),
    Route("GET", "/static/gallery.js", None, 200),
    Route("GET", "/openapi.json", None, 200),
    Route("GET", "/docs", None, 200),
    Route("GET", "/docs/captioner-docs.js", None, 200),
    Route("GET", "/docs/swagger-ui/swagger-ui.css", None, 200),
    Route("GET", "/session", None, 200),
    Route("DELETE", "/session", None, 200),
    Route("GET", "/images", Scope.READ, 200),
    Route("GET", "/images?q=cat", Scope.READ, 200),
    Route("GET", "/models", Scope.READ, 200),
    Route("GET", "/images/export.jsonl", Scope.READ, 200),
    Route("POST", "/images/check", Scope.READ, 200),
    Route("GET", "/images/1", Scope.READ, 200),
    Route("GET", "/images/1/captions", Scope.READ, 200),
    Route("GET", "/images/1/file", Scope.READ, 200),
    Route("GET", "/images/1/thumbnail", Scope.READ, 200),
    Route("POST", "/upload", Scope.UPLOAD, 200),
    Route("GET", "/queue", Scope.READ, 200),
    Route("PATCH", "/images/1", Scope.UPLOAD, 200),
    Route("DELETE", "/images/1", Scope.ADMIN, 200),
    Route("GET", "/metrics", Scope.METRICS, 200),
)
CREDENTIALS = ("none", "wrong", "revoked", "read", "upload", "admin", "metrics")


@dataclass
class KeyedWorld:
    world: FakeWorld
    secrets: dict[str, str]

    def headers(self, credential: str) -> dict[str, str]:
        if credential == "none":
            return {}
        if credential == "wrong":
            return {"Authorization": "Bearer cap_" + "x" * 43}
        return {"Authorization": f"Bearer {self.secrets[credential]}"}

    def call(self, route: Route, credential: str) -> Any:
        data: Any = None
        if route.path == "/upload":
            data = {"image": (io.BytesIO(fake_image("new")), "new.jpg")}
        elif route.path == "/images/check":
            data = json.dumps({"sha256": ["a" * 64]})
        elif route.method == "PATCH":
            data = json.dumps({"description": "a cat, corrected"})
        return read_and_closed(
            self.world.client.open(
                route.path,
                method=route.method,
                headers=self.headers(credential),
                data=data,
                content_type="application/json" if isinstance(data, str) else None,
            )
        )


def read_and_closed(response: Any) -> Any:
    """The body read into memory and the response closed (files are streamed)."""
    response.get_data()
    response.close()
    return response


def keyed_world(tmp_path: Path, **settings: Any) -> KeyedWorld:
    world = build_fake_world(Settings(data_dir=tmp_path / "data", max_upload_mb=1, **settings))
    access = world.container.access()
    secrets = {scope.value: access.create_key(scope, scope.value).secret for scope in Scope}
    secrets["revoked"] = access.create_key(Scope.ADMIN, "gone").secret
    access.revoke_key("gone")
    stored = world.client.post(
        "/upload",
        data={"image": (io.BytesIO(fake_image("cat")), "cat.jpg")},
        headers={"X-API-Key": secrets["admin"]},
    )
    assert stored.status_code == 200
    assert stored.get_json()["id"] == 1
    return KeyedWorld(world, secrets)


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[KeyedWorld]:
    world = keyed_world(tmp_path)
    yield world
    world.world.container.unwire()


def expected_status(route: Route, credential: str) -> int:
    if route.needs is None:
        return route.ok
    if credential in ("none", "wrong", "revoked"):
        return 401
    return route.ok if Scope(credential).allows(route.needs) else 403


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_answers_each_credential_as_its_scope_says(
    keyed: KeyedWorld, route: Route, credential: str
) -> None:
    response = keyed.call(route, credential)

    assert response.status_code == expected_status(route, credential), response.data[:200]
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "key" in response.get_json()["error"]
    if response.status_code == 403:
        assert "scope" in response.get_json()["error"]


def test_the_matrix_covers_every_route_the_app_serves(keyed: KeyedWorld) -> None:
    served = {
        rule.endpoint
        for rule in keyed.world.app.url_map.iter_rules()
        if rule.endpoint != "access.sign_in"  # POST /session: tested on its own below
    }
    adapter = keyed.world.app.url_map.bind("localhost")
    covered = {adapter.match(r.path.split("?")[0], method=r.method)[0] for r in ROUTES}
    assert served == covered
    assert set(SCOPE_BY_ENDPOINT) >= served | {"access.sign_in"}


def test_a_route_nobody_listed_needs_admin() -> None:
    assert scope_for("images.some_new_route") is Scope.ADMIN


def test_x_api_key_header_works_like_bearer(keyed: KeyedWorld) -> None:
    read = keyed.secrets["read"]

    assert keyed.world.client.get("/images", headers={"X-API-Key": read}).status_code == 200
    assert keyed.world.client.get("/metrics", headers={"X-API-Key": read}).status_code == 403


def test_revoked_key_is_refused_on_the_next_request_without_restart(keyed: KeyedWorld) -> None:
    headers = keyed.headers("upload")
    assert keyed.world.client.get("/images", headers=headers).status_code == 200

    keyed.world.container.access().revoke_key("upload")

    assert keyed.world.client.get("/images", headers=headers).status_code == 401


def test_repeated_wrong_keys_from_one_address_get_429_with_retry_after(tmp_path: Path) -> None:
    keyed = keyed_world(tmp_path, auth_failure_rate="3/minute")
    wrong = keyed.headers("wrong")

    statuses = [keyed.world.client.get("/images", headers=wrong).status_code for _ in range(4)]
    blocked = keyed.world.client.get("/images", headers=keyed.headers("admin"))
    other_address = keyed.world.client.get(
        "/images", headers=keyed.headers("admin"), environ_base={"REMOTE_ADDR": "10.0.0.9"}
    )

    assert statuses == [401, 401, 401, 429]
    assert blocked.status_code == 429  # even the right key waits: no guessing at full speed
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert "error" in blocked.get_json()
    assert other_address.status_code == 200


def test_wrong_keys_at_sign_in_count_toward_the_429_too(tmp_path: Path) -> None:
    keyed = keyed_world(tmp_path, auth_failure_rate="2/minute")

    statuses = [
        keyed.world.client.post("/session", data={"key": "cap_wrong"}).status_code for _ in range(3)
    ]

    assert statuses == [401, 401, 429]


def test_upload_rate_limits_each_key_on_its_own(tmp_path: Path) -> None:
    keyed = keyed_world(tmp_path, upload_rate="2/minute")
    uploads = []
    for colour in ("red", "green", "blue"):
        uploads.append(
            keyed.world.client.post(
                "/upload",
                data={"image": (io.BytesIO(fake_image(colour)), f"{colour}.jpg")},
                headers=keyed.headers("upload"),
            )
        )
    other_key = keyed.world.client.post(
        "/upload",
        data={"image": (io.BytesIO(fake_image("pink")), "pink.jpg")},
        headers=keyed.headers("admin"),
    )

    assert [u.status_code for u in uploads] == [200, 200, 429]
    assert int(uploads[2].headers["Retry-After"]) >= 1
    assert other_key.status_code == 200  # the seeding upload came from admin an instant ago


def test_loopback_without_keys_is_open_with_zero_setup(fake_world: FakeWorld) -> None:
    assert fake_world.client.get("/images").status_code == 200
    assert fake_world.client.delete("/images/99").status_code == 404
    assert fake_world.client.get("/session").get_json() == {
        "required": False,
        "signed_in": False,
        "name": None,
        "scope": "admin",
        "allows": ["read", "upload", "admin", "metrics"],
    }


def test_auto_turns_on_as_soon_as_a_key_exists(fake_world: FakeWorld) -> None:
    fake_world.container.access().create_key(Scope.READ, "first")

    assert fake_world.client.get("/images").status_code == 401


@pytest.mark.parametrize(
    ("mode", "host", "status"),
    [
        ("on", "127.0.0.1", 401),
        ("auto", "0.0.0.0", 401),
        ("auto", "::1", 200),
        ("off", "0.0.0.0", 200),
    ],
)
def test_auth_mode_decides_whether_keyless_requests_pass(
    tmp_path: Path, mode: str, host: str, status: int
) -> None:
    world = build_fake_world(Settings(data_dir=tmp_path / "data", auth=mode, host=host))

    assert world.client.get("/images").status_code == status
    assert world.client.get("/healthz").status_code == 200


def test_auth_off_ignores_keys_even_when_some_exist(tmp_path: Path) -> None:
    keyed = keyed_world(tmp_path, auth="off")

    assert keyed.world.client.get("/metrics").status_code == 200


def sign_in(keyed: KeyedWorld, scope: str, **options: Any) -> Any:
    return keyed.world.client.post("/session", data={"key": keyed.secrets[scope]}, **options)


def test_sign_in_sets_an_httponly_strict_cookie_holding_no_key(keyed: KeyedWorld) -> None:
    response = sign_in(keyed, "upload")

    assert response.status_code == 200
    assert response.get_json() == {
        "required": True,
        "signed_in": True,
        "name": "upload",
        "scope": "upload",
        "allows": ["read", "upload"],
    }
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("captioner_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would be dropped
    assert keyed.secrets["upload"] not in cookie


def test_sign_in_over_https_sets_a_secure_cookie(keyed: KeyedWorld) -> None:
    response = sign_in(keyed, "read", base_url="https://captioner.example")

    assert "Secure" in response.headers["Set-Cookie"]


def test_the_session_cookie_carries_the_keys_scope_until_sign_out(keyed: KeyedWorld) -> None:
    client = keyed.world.client
    sign_in(keyed, "read")

    assert client.get("/images").status_code == 200
    assert read_and_closed(client.get("/images/1/thumbnail")).status_code == 200
    assert client.delete("/images/1").status_code == 403
    assert client.get("/session").get_json()["scope"] == "read"

    signed_out = client.delete("/session")

    assert "captioner_session=;" in signed_out.headers["Set-Cookie"]
    assert signed_out.get_json()["signed_in"] is False
    assert client.get("/images").status_code == 401


def test_a_stolen_cookie_stops_working_after_sign_out(keyed: KeyedWorld) -> None:
    client = keyed.world.client
    token = sign_in(keyed, "admin").headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    client.delete("/session")

    client.set_cookie("captioner_session", token)

    assert client.get("/images").status_code == 401


def test_revoking_a_key_ends_its_browser_sessions(keyed: KeyedWorld) -> None:
    sign_in(keyed, "admin")
    keyed.world.container.access().revoke_key("admin")

    assert keyed.world.client.get("/images").status_code == 401
    assert keyed.world.client.get("/session").get_json()["signed_in"] is False


def test_a_wrong_key_at_sign_in_is_a_401_and_sets_no_cookie(keyed: KeyedWorld) -> None:
    response = keyed.world.client.post("/session", data={"key": "cap_nope"})

    assert response.status_code == 401
    assert "Set-Cookie" not in response.headers


def test_sign_in_without_a_key_is_a_400(keyed: KeyedWorld) -> None:
    assert keyed.world.client.post("/session", data={}).status_code == 400


def test_cookie_authenticated_writes_from_other_sites_are_refused(keyed: KeyedWorld) -> None:
    client = keyed.world.client
    sign_in(keyed, "admin")

    cross_site = client.delete("/images/1", headers={"Sec-Fetch-Site": "cross-site"})
    foreign_origin = client.post(
        "/upload",
        data={"image": (io.BytesIO(fake_image("evil")), "evil.jpg")},
        headers={"Origin": "https://evil.example"},
    )
    same_origin = client.delete("/images/1", headers={"Sec-Fetch-Site": "same-origin"})

    assert cross_site.status_code == 403
    assert foreign_origin.status_code == 403
    assert same_origin.status_code == 200


def test_openapi_declares_the_key_schemes_and_each_routes_scope(keyed: KeyedWorld) -> None:
    spec = keyed.world.client.get("/openapi.json").get_json()

    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerKey"]["description"],
    }
    assert schemes["headerKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    paths = spec["paths"]
    assert paths["/healthz"]["get"]["security"] == []
    assert paths["/images"]["get"]["security"][0] == {"bearerKey": ["read"]}
    assert paths["/upload"]["post"]["security"][1] == {"headerKey": ["upload"]}
    assert paths["/images/{image_id}"]["delete"]["security"][0] == {"bearerKey": ["admin"]}
    assert paths["/metrics"]["get"]["security"][0] == {"bearerKey": ["metrics"]}
    assert "metrics" in schemes["bearerKey"]["description"]
    assert {"401", "403", "429"} <= set(paths["/images"]["get"]["responses"])
    assert "401" not in paths["/readyz"]["get"]["responses"]


def test_the_access_log_names_the_key_and_never_holds_it(
    keyed: KeyedWorld, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="captioner.access"):
        keyed.world.client.get("/images", headers=keyed.headers("read"))

    (line,) = [record for record in caplog.records if record.name == "captioner.access"]
    assert line.__dict__["key"] == "read"
    assert keyed.secrets["read"] not in caplog.text


IMAGE_BYTES = ("/images/1/file", "/images/1/thumbnail")
FOR_A_YEAR = "max-age=31536000, immutable"


def vary_of(response: Any) -> set[str]:
    return {part.strip().lower() for part in response.headers.get("Vary", "").split(",")}


@pytest.mark.parametrize("path", IMAGE_BYTES)
def test_image_bytes_behind_a_key_are_cached_by_the_browser_only(
    keyed: KeyedWorld, path: str
) -> None:
    response = read_and_closed(keyed.world.client.get(path, headers=keyed.headers("read")))

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == f"private, {FOR_A_YEAR}"
    assert {"authorization", "x-api-key", "cookie"} <= vary_of(response)


@pytest.mark.parametrize("path", IMAGE_BYTES)
def test_image_bytes_through_a_session_cookie_are_private_too(keyed: KeyedWorld, path: str) -> None:
    assert sign_in(keyed, "read").status_code == 200

    response = read_and_closed(keyed.world.client.get(path))

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == f"private, {FOR_A_YEAR}"
    assert "cookie" in vary_of(response)


@pytest.mark.parametrize("path", IMAGE_BYTES)
def test_image_bytes_are_public_when_no_key_is_needed(fake_world: FakeWorld, path: str) -> None:
    fake_world.client.post("/upload", data={"image": (io.BytesIO(fake_image("cat")), "c.jpg")})

    response = read_and_closed(fake_world.client.get(path))

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == f"public, {FOR_A_YEAR}"
    assert "authorization" not in vary_of(response)


def test_with_auth_off_image_bytes_are_public_even_when_keys_exist(tmp_path: Path) -> None:
    keyed = keyed_world(tmp_path, auth="off")

    response = read_and_closed(keyed.world.client.get("/images/1/file"))

    assert response.headers["Cache-Control"] == f"public, {FOR_A_YEAR}"


@pytest.mark.parametrize("credential", ["admin", "none", "metrics"])
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_no_answer_that_needed_a_key_may_be_kept_by_a_shared_cache(
    keyed: KeyedWorld, route: Route, credential: str
) -> None:
    response = keyed.call(route, credential)
    cache_control = response.headers.get("Cache-Control", "")

    if route.needs is None:
        assert "private" not in cache_control
    else:
        assert cache_control.startswith("private"), cache_control
        assert "public" not in cache_control


def test_the_gallerys_static_assets_stay_public_behind_keys(keyed: KeyedWorld) -> None:
    response = read_and_closed(keyed.world.client.get("/static/gallery.js"))

    assert response.status_code == 200
    assert "private" not in response.headers.get("Cache-Control", "")
