"""Captioner on OpenAI-compatible chat servers (vLLM, Ollama, llama.cpp, LM Studio, SGLang):
each image goes to /v1/chat/completions as a JPEG data URL, with failover across servers."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from captioner.domain.caption_text import DEFAULT_INSTRUCTION, clean_caption
from captioner.domain.errors import CaptionerBusy, CaptionerUnavailable, CaptioningFailed
from captioner.domain.model import Caption, DecodedImage, Provenance, Readiness
from captioner.redaction import without_password

log = logging.getLogger(__name__)
# httpx logs every request at INFO: a line per caption beside the service's own access log.
logging.getLogger("httpx").setLevel(logging.WARNING)

MODEL_PREFIX = "openai:"
# Worth another try, on this server later or on the next one now.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# The request itself is at fault: another server would refuse it too.
REFUSED_STATUS = frozenset({400, 413, 415, 422})


def served_model_name(model: str) -> str:
    """``openai:llava:7b`` -> ``llava:7b`` (the name the server knows the model by)."""
    return model[len(MODEL_PREFIX) :] if model.startswith(MODEL_PREFIX) else model


def api_root(base_url: str) -> str:
    """The /v1 root of a server given as ``http://host:8000/v1`` or just ``http://host:8000``."""
    url = base_url.strip().rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


@dataclass(frozen=True)
class ServedModel:
    """What a server's GET /v1/models says about the model: its id, owner and creation time,
    plus whatever else the engine reports (vLLM's root and max_model_len, for instance)."""

    base_url: str
    id: str
    owned_by: str = ""
    created: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def revision(self) -> str:
        """``openai:<owner>/<root or id>@<created>``: the closest to a weights revision a
        server reports (vLLM's ``root`` is the checkpoint it loaded)."""
        root = self.extra.get("root") or self.id
        owner = f"{self.owned_by}/" if self.owned_by else ""
        created = f"@{self.created}" if self.created is not None else ""
        return f"openai:{owner}{root}{created}"


@dataclass
class _Server:
    base_url: str
    shown: str = ""  # base_url as readiness and errors name it: no password

    def __post_init__(self) -> None:
        self.shown = without_password(self.base_url)

    healthy: bool | None = None  # None: not probed or used yet
    reason: str = "not contacted yet"
    checked_at: float = 0.0
    served: ServedModel | None = None


class _Retry(Exception):
    """This server could not answer now; another (or this one, later) may."""

    def __init__(self, reason: str, wait_s: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


class OpenAICompatibleCaptioner:
    """Implements the Captioner port by asking OpenAI-compatible servers.

    The engine batches requests itself, so callers are not queued into batches here: up to
    ``concurrency`` requests are in flight at once, each on its caller's thread. Servers are
    tried healthy-first; a server that fails a request or a GET /v1/models probe goes to the
    back of the line until it answers again.
    """

    def __init__(
        self,
        model: str,
        base_urls: str | Sequence[str],
        api_key: str = "",
        instruction: str = DEFAULT_INSTRUCTION,
        max_tokens: int = 30,
        max_side: int = 1024,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        queue_timeout_s: float = 120.0,
        health_ttl_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        urls = base_urls.split(",") if isinstance(base_urls, str) else list(base_urls)
        self._servers = [_Server(api_root(url)) for url in urls if url.strip()]
        if not self._servers:
            raise ValueError("an openai: model needs openai_base_url (e.g. http://host:8000/v1)")
        self._model_name = model
        self._served_name = served_model_name(model)
        self._instruction = instruction or DEFAULT_INSTRUCTION
        self._max_tokens = max_tokens
        self._max_side = max_side
        self._retries = retries
        self._backoff_s = backoff_s
        self._queue_timeout_s = queue_timeout_s
        self._health_ttl_s = health_ttl_s
        # /readyz waits on these probes: never as long as a whole caption may take.
        self._probe_timeout_s = min(timeout_s, 3.0)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(max_connections=concurrency * len(self._servers) + 4),
            transport=transport,
        )

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def provenance(self) -> Provenance:
        """What the server reports about the model (see ``served_models``), and the request
        settings; the revision is unknown only when no server tells it."""
        served = self.served_models
        if not served:
            # Nothing has asked for readiness yet (an upload before the first /readyz, the
            # library): ask the servers now, or the caption is stored without its revision.
            self._probe_stale()
            served = self.served_models
        revision = served[0].revision if served else None
        return Provenance.of(
            revision,
            {
                "instruction": self._instruction,
                "max_tokens": self._max_tokens,
                "max_side": self._max_side,
                "temperature": 0,
            },
        )

    @property
    def served_models(self) -> list[ServedModel]:
        """The model as each healthy server last described it (for provenance)."""
        with self._lock:
            return [s.served for s in self._servers if s.healthy and s.served is not None]

    def wanted_edge(self) -> int | None:
        """Decoded with a short edge of at least ``max_side``: enough for the longest side
        sent (never the 48 MP of a camera), whatever the picture's shape."""
        return self._max_side

    def readiness(self) -> Readiness:
        self._probe_stale()
        with self._lock:
            status = "; ".join(
                f"{s.shown} {'up' if s.healthy else 'down'}"
                + ("" if s.healthy else f" ({s.reason})")
                for s in self._servers
            )
            up = any(s.healthy for s in self._servers)
        if up:
            return Readiness(True, f"openai servers: {status}")
        return Readiness(False, f"no OpenAI-compatible server serves {self._served_name}: {status}")

    def wait_until_ready(self, timeout: float | None = None) -> Readiness:
        """Probe the servers; with a ``timeout``, keep probing until one is up or it passes.

        Without one, the first answer is final: unlike a model loading in process, a server
        that is down may never come up, and the CLI should say so rather than hang.
        """
        deadline = time.monotonic() + (timeout or 0.0)
        while True:
            readiness = self.readiness()
            if readiness.ready or time.monotonic() >= deadline:
                return readiness
            time.sleep(min(self._health_ttl_s, max(deadline - time.monotonic(), 0.0)))

    def describe(self, image: DecodedImage, prompt: str) -> Caption:
        instruction = prompt or self._instruction
        body = self._request_body(image, instruction)
        if not self._slots.acquire(timeout=self._queue_timeout_s):
            raise CaptionerBusy("Too many images are waiting for the model server; try again.")
        try:
            # Model time is the server's answer time, retries included; not the slot wait.
            began = time.perf_counter()
            text = self._complete(body)
            duration_ms = (time.perf_counter() - began) * 1000
        finally:
            self._slots.release()
        return Caption(clean_caption(text, instruction), duration_ms)

    def close(self) -> None:
        self._client.close()

    def _request_body(self, image: DecodedImage, instruction: str) -> dict[str, Any]:
        return {
            "model": self._served_name,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": instruction},
                        {"type": "image_url", "image_url": {"url": self._data_url(image)}},
                    ],
                }
            ],
            "temperature": 0,
            "max_tokens": self._max_tokens,
            "stream": False,
        }

    def _data_url(self, image: DecodedImage) -> str:
        from PIL import Image

        pixels: Any = image.pixels
        if max(pixels.size) > self._max_side:
            pixels = pixels.copy()
            pixels.thumbnail((self._max_side, self._max_side), Image.Resampling.LANCZOS)
        if pixels.mode != "RGB":
            pixels = pixels.convert("RGB")
        buffer = io.BytesIO()
        pixels.save(buffer, "JPEG", quality=90)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def _complete(self, body: dict[str, Any]) -> str:
        reasons: list[str] = []
        for attempt in range(self._retries + 1):
            wait_s = 0.0
            for server in self._in_order():
                try:
                    return self._post(server, body)
                except _Retry as retry:
                    reasons.append(f"{server.shown}: {retry.reason}")
                    wait_s = max(wait_s, retry.wait_s)
            if attempt < self._retries:
                time.sleep(max(wait_s, self._backoff_s * 2**attempt))
        raise CaptionerUnavailable(
            f"No OpenAI-compatible server answered for {self._served_name} after "
            f"{self._retries + 1} rounds: {reasons[-1] if reasons else 'no server configured'}."
        )

    def _post(self, server: _Server, body: dict[str, Any]) -> str:
        try:
            response = self._client.post(f"{server.base_url}/chat/completions", json=body)
        except httpx.TimeoutException:
            self._mark(server, False, "timed out")
            raise _Retry("timed out") from None
        except httpx.TransportError as error:
            reason = f"unreachable ({type(error).__name__})"
            self._mark(server, False, reason)
            raise _Retry(reason) from None
        if response.status_code in RETRYABLE_STATUS:
            reason = f"HTTP {response.status_code}"
            # 429 means busy, not broken: keep it in line, but honour its Retry-After.
            if response.status_code != 429:
                self._mark(server, False, reason)
            raise _Retry(reason, _retry_after(response))
        if response.status_code in REFUSED_STATUS:
            raise CaptioningFailed(
                f"The model server refused this image (HTTP {response.status_code}): "
                f"{_error_message(response)}"
            )
        if response.status_code != 200:
            reason = f"HTTP {response.status_code}: {_error_message(response)}"
            self._mark(server, False, reason)
            raise _Retry(reason)
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            self._mark(server, False, "answered something that is not a chat completion")
            raise _Retry("answered something that is not a chat completion") from None
        self._mark(server, True, "")
        return str(content or "")

    def _in_order(self) -> list[_Server]:
        with self._lock:
            # Healthy first, then not yet known, then down; configured order breaks ties.
            rank = {True: 0, None: 1, False: 2}
            return sorted(self._servers, key=lambda s: rank[s.healthy])

    def _mark(self, server: _Server, healthy: bool, reason: str) -> None:
        with self._lock:
            server.healthy = healthy
            server.reason = reason

    def _probe_stale(self) -> None:
        now = time.monotonic()
        for server in self._servers:
            if now - server.checked_at >= self._health_ttl_s:
                self._probe(server)

    def _probe(self, server: _Server) -> None:
        healthy, reason, served = False, "", None
        try:
            response = self._client.get(f"{server.base_url}/models", timeout=self._probe_timeout_s)
        except httpx.HTTPError as error:
            reason = f"unreachable ({type(error).__name__})"
        else:
            if response.status_code != 200:
                reason = f"GET /models answered HTTP {response.status_code}"
            else:
                served, reason = self._served_in(server.shown, response)
                healthy = served is not None
        with self._lock:
            server.healthy, server.reason, server.served = healthy, reason, served
            server.checked_at = time.monotonic()

    def _served_in(self, base_url: str, response: httpx.Response) -> tuple[ServedModel | None, str]:
        try:
            entries = [e for e in response.json()["data"] if isinstance(e, dict)]
        except (ValueError, KeyError, TypeError):
            return None, "GET /models did not answer a model list"
        for entry in entries:
            if entry.get("id") == self._served_name:
                extra = {k: v for k, v in entry.items() if k not in ("id", "owned_by", "created")}
                created = entry.get("created")
                return ServedModel(
                    base_url=base_url,
                    id=self._served_name,
                    owned_by=str(entry.get("owned_by", "")),
                    created=created if isinstance(created, int) else None,
                    extra=extra,
                ), ""
        names = ", ".join(str(e.get("id")) for e in entries[:5]) or "nothing"
        return None, f"serves {names}, not {self._served_name}"


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("Retry-After", "0")), 30.0)
    except ValueError:
        return 0.0


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return response.text[:200]
    if isinstance(error, dict):
        return str(error.get("message", error))[:200]
    return str(error)[:200]
