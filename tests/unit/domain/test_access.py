"""AccessService: keys made once and kept only as hashes, scopes, revocation, sessions, modes."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captioner.domain.access import (
    KEY_PREFIX,
    SESSION_LIFETIME,
    AccessService,
    AuthMode,
    Scope,
    key_hash,
    parse_scope,
)
from captioner.domain.errors import (
    InvalidRequest,
    KeyNameTaken,
    KeyNotFound,
    NotAllowed,
    NotAuthenticated,
)
from tests.support.fakes import InMemoryKeyRing


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def service(
    mode: AuthMode = AuthMode.AUTO, beyond_loopback: bool = False
) -> tuple[AccessService, InMemoryKeyRing, Clock]:
    ring, clock = InMemoryKeyRing(), Clock()
    return AccessService(ring, mode, beyond_loopback, clock), ring, clock


def test_a_new_key_has_256_random_bits_a_prefix_and_only_its_hash_is_kept() -> None:
    access, ring, _ = service()

    issued = access.create_key(Scope.UPLOAD, "uploader")

    assert issued.secret.startswith(KEY_PREFIX)
    assert len(issued.secret) - len(KEY_PREFIX) >= 43  # 32 bytes, base64url: 256 bits
    stored_key, stored_hash = ring.key_hashes["uploader"]
    assert stored_hash == hashlib.sha256(issued.secret.encode()).hexdigest()
    assert issued.secret not in repr(ring.key_hashes)
    assert stored_key == issued.key
    assert access.list_keys() == [issued.key]


def test_keys_are_never_the_same_twice() -> None:
    access, _, _ = service()

    secrets = {access.create_key(Scope.READ).secret for _ in range(50)}

    assert len(secrets) == 50


def test_a_name_in_use_or_malformed_is_refused() -> None:
    access, _, _ = service()
    access.create_key(Scope.READ, "laptop")

    with pytest.raises(KeyNameTaken):
        access.create_key(Scope.ADMIN, "laptop")
    with pytest.raises(InvalidRequest):
        access.create_key(Scope.ADMIN, "two words")


# read < upload < admin is a chain; metrics stands apart (only /metrics), admin allows it.
ALLOWED_BY_SCOPE = {
    Scope.READ: {Scope.READ},
    Scope.UPLOAD: {Scope.READ, Scope.UPLOAD},
    Scope.ADMIN: set(Scope),
    Scope.METRICS: {Scope.METRICS},
}


@given(st.sampled_from(Scope), st.sampled_from(Scope))
def test_a_scope_allows_exactly_the_scopes_it_includes(have: Scope, need: Scope) -> None:
    access, _, _ = service(AuthMode.ON)
    secret = access.create_key(have, "k").secret

    if need in ALLOWED_BY_SCOPE[have]:
        assert access.authorize(need, secret) is not None
    else:
        with pytest.raises(NotAllowed):
            access.authorize(need, secret)


def test_the_scope_table_covers_every_scope() -> None:
    assert set(ALLOWED_BY_SCOPE) == set(Scope)


def test_a_refusal_names_every_scope_that_would_do() -> None:
    access, _, _ = service(AuthMode.ON)
    read = access.create_key(Scope.READ, "dashboard").secret
    scraper = access.create_key(Scope.METRICS, "prometheus").secret

    with pytest.raises(NotAllowed, match=r"needs metrics\. Use a key with scope admin or metrics"):
        access.authorize(Scope.METRICS, read)
    with pytest.raises(NotAllowed, match=r"read\. Use a key with scope read, upload or admin"):
        access.authorize(Scope.READ, scraper)


@given(st.text(min_size=1, max_size=80))
def test_no_made_up_key_gets_in(guess: str) -> None:
    access, _, _ = service(AuthMode.ON)
    access.create_key(Scope.ADMIN, "real")

    with pytest.raises(NotAuthenticated):
        access.authorize(Scope.READ, guess)


def test_a_revoked_key_is_refused_at_once_and_unknown_names_say_so() -> None:
    access, _, _ = service(AuthMode.ON)
    secret = access.create_key(Scope.ADMIN, "old").secret

    access.revoke_key("old")

    with pytest.raises(NotAuthenticated):
        access.authorize(Scope.READ, secret)
    with pytest.raises(KeyNotFound):
        access.revoke_key("old")


def test_last_used_is_written_at_most_once_a_minute() -> None:
    access, ring, clock = service(AuthMode.ON)
    secret = access.create_key(Scope.READ, "busy").secret
    writes = ring.writes

    for _ in range(100):
        access.authorize(Scope.READ, secret)
        clock.advance(seconds=0.5)

    assert ring.writes - writes == 1
    clock.advance(minutes=1)
    access.authorize(Scope.READ, secret)
    assert ring.writes - writes == 2
    assert access.list_keys()[0].last_used_at == clock.now


def test_a_session_stands_in_for_its_key_until_it_expires_or_signs_out() -> None:
    access, ring, clock = service(AuthMode.ON)
    secret = access.create_key(Scope.UPLOAD, "browser").secret

    session = access.sign_in(secret)

    assert session.token != secret
    assert session.token not in repr(ring.sessions)
    assert key_hash(session.token) in ring.sessions
    authorized = access.authorize(Scope.UPLOAD, session=session.token)
    assert authorized is not None
    assert authorized.name == "browser"
    clock.advance(seconds=SESSION_LIFETIME.total_seconds())
    with pytest.raises(NotAuthenticated):
        access.authorize(Scope.READ, session=session.token)

    second = access.sign_in(secret)
    access.sign_out(second.token)
    with pytest.raises(NotAuthenticated):
        access.authorize(Scope.READ, session=second.token)


def test_a_key_given_with_the_request_wins_over_the_session() -> None:
    access, _, _ = service(AuthMode.ON)
    admin = access.sign_in(access.create_key(Scope.ADMIN, "a").secret)
    reader = access.create_key(Scope.READ, "r").secret

    with pytest.raises(NotAllowed):
        access.authorize(Scope.ADMIN, reader, admin.token)


@pytest.mark.parametrize(
    ("mode", "beyond_loopback", "with_key", "required"),
    [
        (AuthMode.AUTO, False, False, False),
        (AuthMode.AUTO, False, True, True),
        (AuthMode.AUTO, True, False, True),
        (AuthMode.ON, False, False, True),
        (AuthMode.OFF, True, True, False),
    ],
)
def test_whether_keys_are_required(
    mode: AuthMode, beyond_loopback: bool, with_key: bool, required: bool
) -> None:
    access, _, _ = service(mode, beyond_loopback)
    if with_key:
        access.create_key(Scope.READ)

    assert access.required() is required
    if not required:
        assert access.authorize(Scope.ADMIN) is None
    else:
        with pytest.raises(NotAuthenticated, match="Authorization: Bearer"):
            access.authorize(Scope.READ)


def test_serving_beyond_loopback_without_a_key_is_refused_with_both_ways_out() -> None:
    refused, _, _ = service(AuthMode.AUTO, beyond_loopback=True)
    with_key, _, _ = service(AuthMode.AUTO, beyond_loopback=True)
    with_key.create_key(Scope.ADMIN)

    problem = refused.startup_problem()

    assert problem is not None
    assert "captioner keys create" in problem
    assert "CAPTIONER_AUTH=off" in problem
    assert with_key.startup_problem() is None
    assert service(AuthMode.OFF, beyond_loopback=True)[0].startup_problem() is None
    assert service(AuthMode.AUTO, beyond_loopback=False)[0].startup_problem() is None


def test_scopes_are_parsed_from_their_names() -> None:
    assert parse_scope("upload") is Scope.UPLOAD
    with pytest.raises(InvalidRequest, match="read, upload, admin"):
        parse_scope("root")


def test_a_missing_key_is_told_the_scope_to_create() -> None:
    access, _, _ = service(AuthMode.ON)

    with pytest.raises(NotAuthenticated, match="keys create --scope metrics"):
        access.authorize(Scope.METRICS)
    with pytest.raises(NotAuthenticated, match="keys create --scope upload"):
        access.authorize(Scope.UPLOAD)
