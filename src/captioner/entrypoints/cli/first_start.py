"""A server's first start: the admin key the operator chose, from a secret file or variable."""

from __future__ import annotations

from pathlib import Path

from captioner.config import Settings
from captioner.domain.access import AccessService
from captioner.domain.errors import InvalidRequest


def chosen_admin_key(settings: Settings) -> tuple[str, str] | None:
    """(key, the setting it came from), or None when the operator chose none."""
    if settings.admin_key_file:
        path = Path(settings.admin_key_file)
        try:
            # One trailing newline is what `echo` and most secret stores add; it is no part of it.
            text = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
        except OSError as error:
            raise InvalidRequest(
                f"Cannot read admin_key_file {path}: {error.strerror}. Mount the secret "
                "there or unset CAPTIONER_ADMIN_KEY_FILE."
            ) from None
        return text, "CAPTIONER_ADMIN_KEY_FILE"
    if settings.admin_key:
        return settings.admin_key, "CAPTIONER_ADMIN_KEY"
    return None


def add_chosen_admin_key(access: AccessService, settings: Settings) -> str | None:
    """Add the chosen admin key when no key exists yet; what to tell the operator, or None.

    The message names the key and where it came from, never the key itself: container
    logs are kept and shipped, so nothing secret may reach them.
    """
    chosen = chosen_admin_key(settings)
    if chosen is None:
        return None
    secret, source = chosen
    added = access.add_first_key(secret)
    if added is None:
        if access.knows(secret):
            return None
        return (
            f"{source} is not one of the API keys and was left out: it is used only on the "
            "first start, when no key exists; manage keys with `captioner keys`."
        )
    return f"Added the admin API key {added.name!r} from {source} (kept only as its hash)."
