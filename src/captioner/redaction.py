"""Secrets kept out of what is shown (settings printouts, readiness reasons, error bodies)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "(set)"  # a secret setting that is set
URL_MASK = "***"  # the password part of a URL


def without_password(url: str) -> str:
    """``url`` with the password of its user part masked: ``http://me:***@host/v1``.

    httpx (like browsers) sends ``user:password@`` as Basic auth, so people put credentials
    for a proxied model server there; the rest of the URL still says which server is meant.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart: show nothing of it rather than leak
        return URL_MASK
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:{URL_MASK}@{host}"))
