"""Settings: one object, read from defaults < config file < environment < command-line flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from captioner.domain.caption_text import DEFAULT_INSTRUCTION
from captioner.domain.throttle import Rate
from captioner.redaction import MASK
from captioner.redaction import without_password as without_password  # re-exported

ENV_PREFIX = "CAPTIONER_"
DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"


def _setting(default: Any, help: str, secret: bool = False) -> Any:
    # A secret stays out of repr(): a library user who prints or logs Settings leaks nothing.
    return field(default=default, metadata={"help": help}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Each field is also the env var ``CAPTIONER_<NAME>``."""

    host: str = _setting("127.0.0.1", "Address the HTTP server listens on.")
    port: int = _setting(5000, "Port the HTTP server listens on.")
    model: str = _setting(
        DEFAULT_MODEL,
        "Hugging Face model id, a local directory saved with save_pretrained, or "
        "openai:<served model name> for an OpenAI-compatible server (vLLM, Ollama, llama.cpp).",
    )
    data_dir: Path = _setting(Path("data"), "Where images (uploads/) and the SQLite database live.")
    device: str = _setting("auto", "Torch device: auto (CUDA if available, else CPU), cpu, cuda.")
    half_precision: bool = _setting(True, "Use bf16/fp16 on CUDA (ignored on CPU).")
    prompt: str = _setting("", "Default prompt for conditional captioning (empty: plain caption).")
    max_new_tokens: int = _setting(30, "Longest caption, in tokens.")
    num_beams: int = _setting(1, "Beam search width (1: greedy, fastest).")
    instruction: str = _setting(
        DEFAULT_INSTRUCTION,
        "What chat models (and openai: servers) are asked when no prompt is given.",
    )
    repetition_penalty: float = _setting(1.0, "Penalty on repeating tokens (1.0: none).")
    no_repeat_ngram_size: int = _setting(0, "Never repeat a phrase of this many tokens (0: off).")
    openai_base_url: str = _setting(
        "", "OpenAI-compatible server(s) for openai: models, comma-separated for failover."
    )
    openai_api_key: str = _setting(
        "", "Bearer key for the openai_base_url servers (if any).", secret=True
    )
    openai_max_side: int = _setting(1024, "Longest image side sent to an openai: server, in px.")
    openai_concurrency: int = _setting(8, "Requests in flight at once to an openai: server.")
    openai_timeout_s: float = _setting(60.0, "Longest wait for one openai: server response.")
    openai_retries: int = _setting(3, "Retries of a failed openai: request (429, 5xx, no answer).")
    max_batch: int = _setting(8, "Most images the model describes in one batch.")
    max_wait_ms: float = _setting(10.0, "How long a batch waits for company before it runs.")
    fill_wait_ms: float = _setting(
        200.0,
        "Longest extra wait to fill a batch: for a burst still arriving, or for the last "
        "batch's callers coming back (never over a quarter of that batch's model time).",
    )
    max_queue: int = _setting(64, "Images that may wait for the model before uploads get 503.")
    caption_timeout_s: float = _setting(120.0, "Longest wait for a caption before a 503.")
    max_upload_mb: float = _setting(20.0, "Largest upload accepted, in MB (413 above).")
    max_pixels: int = _setting(64_000_000, "Largest image accepted, in pixels (width x height).")
    threads: int = _setting(16, "HTTP worker threads of the server.")
    torch_threads: int = _setting(0, "Torch CPU threads (0: torch's default, one per core).")
    warm_up: bool = _setting(True, "Run one caption at start-up before /readyz says ready.")
    compile: str = _setting(
        "background",
        "Compiled model: off (never), background (serve at once, compiled parts join when "
        "warm; off for CLI commands), wait (ready once compiled). BLIP's captions are the "
        "same in every mode; a compiled vision tower (BLIP-2, LLaVA-style) may change one "
        "where the top two words nearly tie.",
    )
    log_format: str = _setting("text", "Log lines as text or json.")
    check_on_start: bool = _setting(True, "Report storage problems at server start.")
    auth: str = _setting(
        "auto",
        "Require API keys: auto (when any key exists or the server listens beyond "
        "loopback), on, or off.",
    )
    auth_failure_rate: str = _setting(
        "10/minute",
        "Wrong keys one client address may send before 429 (counted in the catalogue, so "
        "for all replicas together).",
    )
    upload_rate: str = _setting(
        "", "Uploads one key may make, like 60/minute (empty: no limit; counted per process)."
    )
    admin_key: str = _setting(
        "",
        "An admin API key `serve` adds when no key exists yet (first start; at least 32 "
        "random characters); kept only as its hash.",
        secret=True,
    )
    admin_key_file: str = _setting(
        "",
        "A file holding admin_key (a container secret such as /run/secrets/admin_key); "
        "wins over admin_key.",
    )
    database_url: str = _setting(
        "",
        "Catalogue database: empty for SQLite in the data dir, or postgresql://user:pass@host/db "
        "shared by several replicas.",
        secret=True,  # its password
    )
    claim_lease_s: float = _setting(
        30.0,
        "Lease of a claim on a caption in progress, renewed while the model works; a replica "
        "that dies holding one delays that image's caption by at most this long.",
    )
    store_url: str = _setting(
        "",
        "Where image files live: empty for <data_dir>/uploads, or s3://bucket/prefix for "
        "S3-compatible storage (endpoint, credentials, region: the AWS_* variables).",
    )
    store_timeout_s: float = _setting(
        5.0, "Connect and read timeout of object storage calls (a dead endpoint answers 503)."
    )
    store_redirect_s: int = _setting(
        0,
        "With an s3:// store_url: answer GET /images/<id>/file with a redirect to a presigned "
        "URL valid this many seconds (clients must reach the endpoint); 0 streams through.",
    )
    min_free_mb: float = _setting(
        100.0, "Free disk space below which a local store refuses uploads (507) and is not ready."
    )
    no_model: bool = _setting(
        False,
        "Serve without loading a model: uploads are queued and `captioner worker` processes "
        "(sharing database_url and store_url) caption them; synchronous uploads wait for one.",
    )
    max_attempts: int = _setting(
        3, "Model runs a queued image gets before it is marked failed (with the reason)."
    )
    retry_backoff_s: float = _setting(
        10.0, "Wait before a queued image whose model run failed is tried again; doubles each time."
    )
    queue_batch: int = _setting(8, "Queued images a worker takes and captions at once.")
    queue_poll_s: float = _setting(1.0, "How often an idle worker looks for queued images.")
    worker_heartbeat_s: float = _setting(
        5.0, "How often a worker writes its heartbeat; three missed beats: not alive."
    )
    queue_stuck_s: float = _setting(
        600.0, "Oldest pending caption older than this: /readyz says the queue is stuck."
    )
    work_queue: bool = _setting(
        True, "A server with a model captions queued images while no upload waits for it."
    )

    def __post_init__(self) -> None:
        # However the directory was spelled (relative, ./, trailing slash, a symlink), a local
        # model has one name: the deduplication key and every record's `model` use it.
        object.__setattr__(self, "model", canonical_model_name(self.model))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def compile_cache_dir(self) -> Path:
        return self.data_dir / "compile-cache"  # inductor's artifacts, kept across restarts

    @property
    def store_kind(self) -> str:
        """Which image store ``store_url`` names: "s3" or "filesystem" (the data dir)."""
        return "s3" if self.store_url else "filesystem"

    @property
    def file_links_kind(self) -> str:
        """ "s3" when file requests are redirected to presigned bucket URLs, else "none"."""
        return "s3" if self.store_url and self.store_redirect_s > 0 else "none"

    @property
    def listens_beyond_loopback(self) -> bool:
        """Whether hosts other than this one can reach the server (a name counts as beyond)."""
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return True

    @property
    def database_path(self) -> Path:
        return self.data_dir / "captioner.sqlite3"

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
    ) -> Settings:
        """Build settings; ``overrides`` (CLI flags) beat env vars, which beat the config file.

        The config file is ``config_file`` or ``$CAPTIONER_CONFIG``: TOML with the same names.
        None-valued overrides mean "flag not given" and are ignored.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = config_file or (
            Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None
        )
        if path is not None:
            with open(path, "rb") as file:
                data = tomllib.load(file)
            values.update(data.get("captioner", data))
        for setting in fields(cls):
            name = ENV_PREFIX + setting.name.upper()
            if name in env:
                values[setting.name] = env[name]
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        known = {setting.name: setting for setting in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        parsed = {name: _parse(known[name], value) for name, value in values.items()}
        settings = cls(**parsed)
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not a TCP port")
        for name in (
            "max_new_tokens",
            "num_beams",
            "max_batch",
            "max_queue",
            "threads",
            "openai_max_side",
            "openai_concurrency",
            "max_attempts",
            "queue_batch",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in (
            "max_upload_mb",
            "caption_timeout_s",
            "max_pixels",
            "openai_timeout_s",
            "claim_lease_s",
            "queue_poll_s",
            "worker_heartbeat_s",
            "queue_stuck_s",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.retry_backoff_s < 0:
            problems.append("retry_backoff_s cannot be negative")
        if self.max_wait_ms < 0 or self.fill_wait_ms < 0 or self.torch_threads < 0:
            problems.append("max_wait_ms, fill_wait_ms and torch_threads cannot be negative")
        if self.compile not in ("off", "background", "wait"):
            problems.append("compile must be off, background or wait")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            problems.append("database_url must be empty (SQLite) or a postgresql:// URL")
        if self.repetition_penalty <= 0:
            problems.append("repetition_penalty must be positive")
        if self.no_repeat_ngram_size < 0 or self.openai_retries < 0:
            problems.append("no_repeat_ngram_size and openai_retries cannot be negative")
        if self.model.startswith("openai:") and not self.openai_base_url.strip():
            problems.append("an openai: model needs openai_base_url (e.g. http://host:8000/v1)")
        if self.store_url and not self.store_url.startswith("s3://"):
            problems.append("store_url must be empty or look like s3://bucket/prefix")
        if self.store_timeout_s <= 0 or self.min_free_mb < 0 or self.store_redirect_s < 0:
            problems.append(
                "store_timeout_s must be positive, min_free_mb and store_redirect_s not negative"
            )
        if self.log_format not in ("text", "json"):
            problems.append("log_format must be text or json")
        if self.auth not in ("auto", "on", "off"):
            problems.append("auth must be auto, on or off")
        for name in ("auth_failure_rate", "upload_rate"):
            try:
                Rate.parse(getattr(self, name))
            except ValueError:
                problems.append(f"{name} must look like 60/minute (per second, minute, hour, day)")
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()
        }

    def for_display(self) -> dict[str, Any]:
        """``as_dict`` with secrets masked: what `captioner config` prints (and bug reports
        end up quoting)."""
        values = self.as_dict()
        for secret in ("openai_api_key", "admin_key"):
            if values[secret]:
                values[secret] = MASK
        values["openai_base_url"] = ",".join(
            without_password(url) for url in self.openai_base_url.split(",")
        )
        values["database_url"] = without_password(self.database_url)
        return values

    @classmethod
    def table_rows(cls) -> list[tuple[str, str, str, str]]:
        """(setting, env var, default, meaning) for every setting: docs/configuration.md's table."""
        return [
            (
                setting.name,
                ENV_PREFIX + setting.name.upper(),
                str(setting.default),
                str(setting.metadata["help"]),
            )
            for setting in fields(cls)
        ]


def canonical_model_name(model: str) -> str:
    """The one name of a model: a local directory's absolute, resolved path (no trailing
    slash), else the setting as given (a hub id, an ``openai:`` name).

    Symlinks are resolved: two links to one directory are one model, and a link switched to
    other weights names the new directory rather than keeping the old one's captions. A
    spelling that can only be a path (absolute, ``./``, ``../``, ``~``, a trailing slash,
    more than one ``/``) is made absolute even when nothing is there yet, so the error that
    follows names the directory it looked for; ``org/name`` that is no directory here stays
    a hub id.
    """
    text = model.strip()
    if not text or text.startswith("openai:"):
        return text
    path = Path(text).expanduser()
    path_only = (
        text.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or text in (".", "..")
        or text.endswith(("/", "\\"))
        or text.count("/") > 1
        or "\\" in text
    )
    if path_only or path.is_dir():
        return os.path.realpath(path)
    return text


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(setting: dataclasses.Field[Any], value: Any) -> Any:
    kind: type[Any] = type(setting.default)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if issubclass(kind, Path):
            return Path(text)
    except ValueError:
        raise ValueError(
            f"setting {setting.name} ({ENV_PREFIX}{setting.name.upper()}) "
            f"must be a {kind.__name__}, got {value!r}"
        ) from None
    return text
