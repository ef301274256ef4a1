"""API keys over HTTP: the per-request check of key or session against the route's scope
(scopes.py), and the browser's sign-in at /session."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.exceptions import TooManyRequests

from captioner.domain.access import AccessService, ApiKey, Scope
from captioner.domain.errors import InvalidRequest, NotAuthenticated
from captioner.domain.ports import RateLimiter
from captioner.entrypoints.http.openapi.declare import (
    RETRY_AFTER,
    Header,
    Reply,
    documented,
    error_replies,
)
from captioner.entrypoints.http.schemas import ErrorBody, SessionState, SignInForm
from captioner.entrypoints.http.scopes import SESSION_COOKIE, scope_for


def register_access(
    app: Flask, access: AccessService, failed_keys: RateLimiter, uploads: RateLimiter
) -> None:
    """Check every request's key or session against its route's scope; serve /session."""

    def authorize(needed: Scope) -> ApiKey | None:
        secret = presented_key()
        address = request.remote_addr or "unknown"
        if secret is not None:
            wait = failed_keys.blocked_for(address)
            if wait is not None:
                raise _too_many("Too many wrong API keys from this address.", wait)
        try:
            return access.authorize(needed, secret, request.cookies.get(SESSION_COOKIE))
        except NotAuthenticated:
            if secret is not None:
                failed_keys.hit(address)
            raise

    @app.before_request
    def check_access() -> None:
        needed = scope_for(request.endpoint) if request.endpoint is not None else None
        if needed is None:  # open, or no such route (404/405 follow)
            return
        g.behind_key = True  # a refusal is as private as what it refuses
        key = authorize(needed)
        g.behind_key = key is not None
        g.api_key = key.name if key is not None else None
        if request.endpoint == "images.upload":
            wait = uploads.hit(key.name if key is not None else f"@{request.remote_addr}")
            if wait is not None:
                raise _too_many("Too many uploads with this key.", wait)

    @app.after_request
    def keep_out_of_shared_caches(response: Response) -> Response:
        if g.get("behind_key"):
            cache_privately(response)
        return response

    app.register_blueprint(_session_blueprint(access, failed_keys))


# Every way a request carries a key: a browser's cache must not answer one key's request
# with what another key (or none) was given.
CREDENTIAL_HEADERS = ("Authorization", "X-API-Key", "Cookie")


def cache_privately(response: Response) -> Response:
    """Keep an answer that needed a key out of shared caches (proxies, CDNs).

    A shared cache stores a ``public`` answer and serves it to anyone who asks for the URL,
    key or not: private images would leak. ``private`` keeps the rest (``max-age``,
    ``immutable``), so the key holder's own browser still caches content-addressed bytes.
    """
    directives = [
        directive.strip()
        for directive in response.headers.get("Cache-Control", "").split(",")
        if directive.strip()
    ]
    kept = [
        directive
        for directive in directives
        if directive.split("=", 1)[0].strip().lower() not in ("public", "private", "s-maxage")
    ]
    response.headers["Cache-Control"] = ", ".join(["private", *kept])
    response.vary.update(CREDENTIAL_HEADERS)
    return response


SET_SESSION = Header("Set-Cookie", f"`{SESSION_COOKIE}`: the session token.", required=True)


def presented_key() -> str | None:
    """The key in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, if any."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def _too_many(reason: str, wait_s: int) -> TooManyRequests:
    return TooManyRequests(f"{reason} Try again in {wait_s} s.", retry_after=wait_s)


def _session_blueprint(access: AccessService, failed_keys: RateLimiter) -> Blueprint:
    """GET, POST and DELETE /session: the gallery trades a key for an HttpOnly cookie.

    The cookie carries a random token whose hash is kept with the key's name, never the key;
    the page's scripts never see either. SameSite=Strict and the cross-site write check keep
    other sites from using it.
    """
    blueprint = Blueprint("access", __name__)

    def state(key: ApiKey | None) -> dict[str, Any]:
        # Without keys required, a browser may do everything: the page shows every control.
        required = access.required()
        scope = key.scope if key is not None else (None if required else Scope.ADMIN)
        return {
            "required": required,
            "signed_in": key is not None,
            "name": key.name if key is not None else None,
            "scope": scope.value if scope is not None else None,
            "allows": [s.value for s in Scope if scope is not None and scope.allows(s)],
        }

    @blueprint.get("/session")
    @documented(tags=("access",), replies={200: Reply("This browser's sign-in.", SessionState)})
    def session() -> Response:
        """Whether keys are needed, and what this browser's sign-in (if any) allows."""
        token = request.cookies.get(SESSION_COOKIE)
        key = None
        if token is not None and access.required():
            try:
                key = access.session_key(token)
            except NotAuthenticated:
                key = None
        return jsonify(state(key))

    @blueprint.post("/session")
    @documented(
        tags=("access",),
        form=SignInForm,
        replies={
            200: Reply(
                "Signed in; the session cookie is set (HttpOnly, SameSite=Strict).",
                SessionState,
                headers=(SET_SESSION,),
            ),
            **error_replies(InvalidRequest, NotAuthenticated),
            429: Reply("Too many wrong keys from this address.", ErrorBody, headers=(RETRY_AFTER,)),
        },
    )
    def sign_in() -> Response:
        """Sign in with an API key, for the gallery page: the answer sets a session cookie.

        The cookie holds a random token, not the key; revoking the key ends the session.
        """
        address = request.remote_addr or "unknown"
        wait = failed_keys.blocked_for(address)
        if wait is not None:
            raise _too_many("Too many wrong API keys from this address.", wait)
        secret = request.form.get("key", "").strip()
        if not secret:
            raise InvalidRequest("Send the API key in the form field `key`.")
        try:
            signed_in = access.sign_in(secret)
        except NotAuthenticated:
            failed_keys.hit(address)
            raise
        response = jsonify(state(signed_in.key))
        response.set_cookie(
            SESSION_COOKIE,
            signed_in.token,
            expires=signed_in.expires_at,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
        return response

    @blueprint.delete("/session")
    @documented(
        tags=("access",),
        replies={200: Reply("Signed out; the cookie is cleared.", SessionState)},
    )
    def sign_out() -> Response:
        """Sign out: the session is forgotten on the server and its cookie cleared."""
        token = request.cookies.get(SESSION_COOKIE)
        if token is not None:
            access.sign_out(token)
        response = jsonify(state(None))
        response.delete_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=request.is_secure
        )
        return response

    return blueprint
