"""`captioner serve`, `keys`, `db` and `config`: running and administering the service."""

from __future__ import annotations

import argparse
import json
import sys

from captioner.config import Settings
from captioner.container import opened
from captioner.domain.access import AccessService, ApiKey, parse_scope
from captioner.entrypoints.cli import first_start, growth
from captioner.entrypoints.cli.services import opened_access


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from captioner.entrypoints import server

    with opened_access(settings, args) as access:
        chosen_key = first_start.add_chosen_admin_key(access, settings)
        problem = access.startup_problem()
    if chosen_key is not None:
        print(f"captioner: {chosen_key}", file=sys.stderr)
    if problem is not None:
        print(f"captioner: {problem}", file=sys.stderr)
        return 2
    server.serve(settings)
    return 0


def keys(settings: Settings, args: argparse.Namespace) -> int:
    with opened_access(settings, args) as access:
        _manage_keys(access, args)
    return 0


def _manage_keys(access: AccessService, args: argparse.Namespace) -> None:
    if args.keys_command == "create":
        issued = access.create_key(parse_scope(args.scope), args.name)
        print(f"Created API key {issued.key.name!r} with scope {issued.key.scope.value}.")
        print("It is shown only this once; keep it somewhere safe:")
        print(issued.secret)
    elif args.keys_command == "list":
        for key in access.list_keys():
            used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never"
            if args.json:
                print(json.dumps(_key_json(key)))
            else:
                print(f"{key.name}\t{key.scope.value}\t{key.created_at:%Y-%m-%d %H:%M}\t{used}")
    else:
        access.revoke_key(args.name)
        print(f"Revoked API key {args.name!r}.")


def _key_json(key: ApiKey) -> dict[str, str | None]:
    return {
        "name": key.name,
        "scope": key.scope.value,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }


def config(settings: Settings, args: argparse.Namespace) -> int:
    if args.table:
        print(settings_table())
        return 0
    if args.json:
        print(json.dumps(settings.for_display(), indent=2))
    else:
        for name, value in settings.for_display().items():
            print(f"{name} = {value!r}")
    return 0


def db(settings: Settings, args: argparse.Namespace) -> int:
    if args.db_command == "copy":
        return growth.db_copy(settings, args)
    # Opening the catalogue applies its migrations (under the migration lock on PostgreSQL).
    with opened(args.containers(settings, False)) as container:
        version = getattr(container.repository(), "schema_version", "unknown")
    where = "PostgreSQL" if settings.database_url else str(settings.database_path)
    print(f"database {where} is at schema version {version}")
    return 0


def settings_table() -> str:
    """docs/configuration.md's settings table, generated from the Settings class."""
    lines = ["| Setting | Environment variable | Default | Meaning |", "|---|---|---|---|"]
    for name, env, default, meaning in Settings.table_rows():
        shown = f"`{default}`" if default else "(empty)"
        lines.append(f"| `{name}` | `{env}` | {shown} | {meaning} |")
    return "\n".join(lines)
