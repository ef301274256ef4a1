"""Who may do what: API keys with scopes, made, listed, revoked and checked on every request."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import TYPE_CHECKING

from captioner.domain.errors import (
    InvalidRequest,
    KeyNameTaken,
    KeyNotFound,
    NotAllowed,
    NotAuthenticated,
)

if TYPE_CHECKING:  # ports name ApiKey: importing KeyRing at run time would be a cycle
    from captioner.domain.ports import KeyRing


class Scope(str, Enum):
    """What an API key may do.

    read < upload < admin is a chain: each allows everything the ones before it allow.
    metrics stands beside the chain: it allows scraping /metrics and nothing else, so a
    Prometheus server's key can read no image; admin allows it too, read and upload do not.
    """

    READ = "read"  # list, search, view files and thumbnails
    UPLOAD = "upload"  # read, and upload
    ADMIN = "admin"  # everything: delete, /metrics too
    METRICS = "metrics"  # /metrics only: for a monitoring system's scraper

    def allows(self, needed: Scope) -> bool:
        if self is needed or self is Scope.ADMIN:
            return True
        if Scope.METRICS in (self, needed):
            return False
        return _CHAIN.index(self) >= _CHAIN.index(needed)


_CHAIN = (Scope.READ, Scope.UPLOAD, Scope.ADMIN)


class AuthMode(str, Enum):
    """Whether requests must carry a key: ``auto`` is on when a key exists or beyond loopback."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class ApiKey:
    """An API key as kept: its name and scope, never the key itself."""

    name: str
    scope: Scope
    created_at: datetime
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: ``secret`` is shown once to its owner and kept nowhere."""

    key: ApiKey
    secret: str


@dataclass(frozen=True)
class Session:
    """A sign-in made from a key (for the browser): ``token`` goes into a cookie, once."""

    key: ApiKey
    token: str
    expires_at: datetime


# Recognisable in a leaked log or a secret scanner's rules; the rest is 256 random bits.
KEY_PREFIX = "cap_"
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A key the operator chose (rather than one `keys create` made) is kept as the same fast hash,
# so it must carry as much randomness as a made one could: 32 hex digits are 128 bits.
MIN_CHOSEN_KEY_LENGTH = 32
# last_used is for people ("is this key still in use?"): a minute is precise enough, and
# writing on every request would turn each read into a database write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
SESSION_LIFETIME = timedelta(hours=12)
MISSING_KEY = (
    "This captioner needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
    " (create one with `captioner keys create --scope {scope}`)."
)


def key_hash(secret: str) -> str:
    """The SHA-256 (hex) kept in place of a key or session token.

    Keys and tokens are 256 random bits, so neither guessing them nor brute-forcing them from
    a stolen hash is feasible; a slow KDF (bcrypt, argon2) only helps low-entropy passwords,
    and would spend its milliseconds on every request.
    """
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


class AccessService:
    """Makes, lists and revokes keys; decides whether a request's key or session may go on.

    Nothing is cached: each check is one indexed lookup in the shared key ring, so a key
    revoked on one replica is refused by every replica from the next request on.
    """

    def __init__(
        self,
        key_ring: KeyRing,
        mode: AuthMode = AuthMode.AUTO,
        beyond_loopback: bool = False,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._keys = key_ring
        self._mode = mode
        self._beyond_loopback = beyond_loopback
        self._clock = clock

    @property
    def mode(self) -> AuthMode:
        return self._mode

    def required(self) -> bool:
        """Whether requests must carry a key now (``auto`` asks the key ring each time)."""
        if self._mode is AuthMode.AUTO:
            return self._beyond_loopback or self._keys.has_keys()
        return self._mode is AuthMode.ON

    def startup_problem(self) -> str | None:
        """Why a server should not start open to the network, or None when it may start."""
        if self._mode is AuthMode.AUTO and self._beyond_loopback and not self._keys.has_keys():
            return (
                "refusing to serve beyond loopback with no API key: anyone on the network "
                "could upload, read and delete images. Create a key with `captioner keys "
                "create --scope admin` or choose one with CAPTIONER_ADMIN_KEY_FILE (a secret "
                "file) on first start, or opt out explicitly with CAPTIONER_AUTH=off "
                '(auth = "off" in the config file).'
            )
        return None

    def create_key(self, scope: Scope, name: str | None = None) -> IssuedKey:
        """A new random key; its secret is returned here once and kept nowhere."""
        if name is None:
            name = f"{scope.value}-{secrets.token_hex(4)}"
        if not KEY_NAME.match(name):
            raise InvalidRequest(
                f"Key name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-'."
            )
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(name=name, scope=scope, created_at=self._clock())
        self._keys.add_key(key, key_hash(secret))
        return IssuedKey(key=key, secret=secret)

    def add_first_key(self, secret: str, name: str = "admin") -> ApiKey | None:
        """Keep a key the operator chose, with admin scope, when no key exists yet (first start).

        None when keys exist already: the chosen key seeds an empty key ring once, and from
        then on keys are managed with `captioner keys`, so a revoked key stays revoked.
        Several servers starting together add it once.
        """
        if len(secret) < MIN_CHOSEN_KEY_LENGTH or secret != secret.strip():
            raise InvalidRequest(
                f"The admin key given is too short: use at least {MIN_CHOSEN_KEY_LENGTH} "
                "characters without surrounding spaces, random ones (e.g. the output of "
                "`openssl rand -hex 32`), since keys are kept as a fast hash."
            )
        if self._keys.has_keys():
            return None
        key = ApiKey(name=name, scope=Scope.ADMIN, created_at=self._clock())
        try:
            self._keys.add_key(key, key_hash(secret))
        except KeyNameTaken:  # another replica starting at the same moment added it
            return None
        return key

    def list_keys(self) -> Sequence[ApiKey]:
        """Every key, oldest first: names, scopes and dates, never the keys."""
        return self._keys.all_keys()

    def revoke_key(self, name: str) -> None:
        """Forget the key and its sign-in sessions; refused from the next request on."""
        if not self._keys.remove_key(name):
            raise KeyNotFound(f"No API key is named {name!r} (see `captioner keys list`).")

    def authorize(
        self, needed: Scope, secret: str | None = None, session: str | None = None
    ) -> ApiKey | None:
        """The key allowed to do what needs ``needed``; None when access is open.

        A key given with the request wins over a session. Raise NotAuthenticated when
        there is neither or it is unknown, NotAllowed when its scope is too narrow.
        """
        if self._mode is AuthMode.OFF:
            return None
        # The credential first: a known key proves keys exist, so the common case costs one
        # lookup; only a missing or failed one asks whether keys are needed at all.
        try:
            if secret is not None:
                key = self.authenticate(secret)
            elif session is not None:
                key = self.session_key(session)
            else:
                raise NotAuthenticated(MISSING_KEY.format(scope=needed.value))
        except NotAuthenticated:
            if self.required():
                raise
            return None
        if not key.scope.allows(needed):
            enough = [scope.value for scope in Scope if scope.allows(needed)]
            raise NotAllowed(
                f"The key {key.name!r} has scope {key.scope.value}; this needs "
                f"{needed.value}. Use a key with scope {_either(enough)}."
            )
        return key

    def knows(self, secret: str) -> bool:
        """Whether this is one of the keys (nothing is marked as used)."""
        found = self._keys.key_with_hash(key_hash(secret))
        return found is not None and hmac.compare_digest(found[1], key_hash(secret))

    def authenticate(self, secret: str) -> ApiKey:
        digest = key_hash(secret)
        found = self._keys.key_with_hash(digest)
        # The lookup goes by hash, so its timing tells nothing about the key; the final
        # comparison is constant-time all the same.
        if found is None or not hmac.compare_digest(found[1], digest):
            raise NotAuthenticated("The API key is not known: it is wrong or was revoked.")
        return self._touched(found[0])

    def sign_in(self, secret: str) -> Session:
        """A session for a browser: the key is checked once, then the token stands in for it."""
        key = self.authenticate(secret)
        token = secrets.token_urlsafe(32)
        expires_at = self._clock() + SESSION_LIFETIME
        self._keys.add_session(key_hash(token), key.name, expires_at)
        return Session(key=key, token=token, expires_at=expires_at)

    def session_key(self, token: str) -> ApiKey:
        digest = key_hash(token)
        found = self._keys.key_of_session(digest, self._clock())
        if found is None or not hmac.compare_digest(found[1], digest):
            raise NotAuthenticated("The sign-in has expired or its key was revoked: sign in again.")
        return self._touched(found[0])

    def sign_out(self, token: str) -> None:
        self._keys.remove_session(key_hash(token))

    def _touched(self, key: ApiKey) -> ApiKey:
        now = self._clock()
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            self._keys.mark_used(key.name, now)
        return key


def _either(names: Sequence[str]) -> str:
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def parse_scope(text: str) -> Scope:
    try:
        return Scope(text)
    except ValueError:
        choices = ", ".join(scope.value for scope in Scope)
        raise InvalidRequest(f"Unknown scope {text!r}: use one of {choices}.") from None
