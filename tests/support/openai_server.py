"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: GET /v1/models and
POST /v1/chat/completions, checking each request against what vLLM, Ollama and llama.cpp
accept, and able to be told to fail, stall or answer 429."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What each engine says about a model on GET /v1/models (their documented shapes).
FLAVOURS = ("vllm", "ollama", "llamacpp")


@dataclass
class SeenRequest:
    """One chat completion request as the server understood it."""

    model: str
    instruction: str
    image_size: tuple[int, int]
    max_tokens: int
    temperature: float
    authorization: str


@dataclass
class ServerState:
    """What the server does next, and what it saw; tests change ``mode`` while it runs."""

    served_model: str
    flavour: str = "vllm"
    mode: str = "ok"  # ok | fail (500) | stall | busy (429) | refuse (400)
    stall_s: float = 2.0
    busy_times: int = 0  # answer 429 this many more times, then behave as ``mode``
    answer_delay_s: float = 0.0
    refuse_sizes: set[tuple[int, int]] = field(default_factory=set)  # 400 for images this size
    answer_suffix: str = "<|im_end|>"  # engines sometimes leave end-of-turn tokens in
    requests: list[SeenRequest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    completions_asked: int = 0
    models_asked: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def answer_for(instruction: str, size: tuple[int, int]) -> str:
    """The caption the server gives: depends on the image and the instruction it was sent."""
    return f"an image of {size[0]} by {size[1]} pixels for: {instruction}"


def _models_body(state: ServerState) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": state.served_model, "object": "model", "created": 1700000000}
    if state.flavour == "vllm":
        entry.update(owned_by="vllm", root=state.served_model, parent=None, max_model_len=4096)
    elif state.flavour == "ollama":
        entry.update(owned_by="library")
    else:
        entry.update(owned_by="llamacpp", meta={"n_ctx_train": 4096, "n_params": 1000})
    body: dict[str, Any] = {"object": "list", "data": [entry]}
    if state.flavour == "llamacpp":
        body["models"] = [{"name": state.served_model, "model": state.served_model}]
    return body


def check_chat_request(body: Any) -> tuple[list[str], SeenRequest | None]:
    """Problems with a request that one of vLLM, Ollama or llama.cpp would refuse or misread.

    All three take OpenAI's chat shape; Ollama and llama.cpp load images only from base64
    data URLs in ``image_url`` parts, and none of them accepts a bare string as a part.
    """
    from PIL import Image

    problems: list[str] = []
    if not isinstance(body, dict):
        return ["body is not a JSON object"], None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        problems.append("model must be a non-empty string")
    if body.get("stream") not in (None, False):
        problems.append("stream must be off (the client reads one JSON answer)")
    temperature = body.get("temperature")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        problems.append("temperature must be a number")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        problems.append("max_tokens must be a positive integer")
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) != 1:
        return [*problems, "messages must be a list with one user message"], None
    message = messages[0]
    if not isinstance(message, dict) or message.get("role") != "user":
        return [*problems, "the message must be a dict with role user"], None
    parts = message.get("content")
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        return [*problems, "content must be a list of typed parts"], None
    texts = [p.get("text") for p in parts if p.get("type") == "text"]
    images = [p.get("image_url") for p in parts if p.get("type") == "image_url"]
    if len(texts) != 1 or not isinstance(texts[0], str) or not texts[0]:
        problems.append("there must be one non-empty text part")
    if len(images) != 1 or len(parts) != 2:
        return [*problems, "there must be one image_url part beside the text"], None
    url = images[0].get("url") if isinstance(images[0], dict) else None
    prefix = "data:image/jpeg;base64,"
    if not isinstance(url, str) or not url.startswith(prefix):
        return [*problems, "image_url.url must be a data:image/jpeg;base64 URL"], None
    try:
        image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :], validate=True)))
        image.load()
    except Exception as error:
        return [*problems, f"the data URL is not a JPEG image ({error})"], None
    if image.format != "JPEG":
        problems.append(f"the data URL holds {image.format}, not JPEG")
    seen = SeenRequest(
        model=str(model),
        instruction=str(texts[0]) if texts else "",
        image_size=image.size,
        max_tokens=max_tokens if isinstance(max_tokens, int) else 0,
        temperature=float(temperature) if isinstance(temperature, (int, float)) else -1.0,
        authorization="",
    )
    return problems, seen


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            state.models_asked += 1
        if self.path != "/v1/models":
            self._reply(404, {"error": {"message": f"no route {self.path}"}})
        elif state.mode == "fail":
            self._reply(500, {"error": {"message": "engine is down"}})
        else:
            self._reply(200, _models_body(state))

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        with state.lock:
            state.completions_asked += 1
            state.in_flight += 1
            state.most_in_flight = max(state.most_in_flight, state.in_flight)
            busy = state.busy_times > 0
            if busy:
                state.busy_times -= 1
            mode = state.mode
        try:
            self._complete(state, raw, mode, busy)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _complete(self, state: ServerState, raw: bytes, mode: str, busy: bool) -> None:
        if self.path != "/v1/chat/completions":
            self._reply(404, {"error": {"message": f"no route {self.path}"}})
            return
        if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
            state.problems.append("Content-Type is not application/json")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        problems, seen = check_chat_request(body)
        if seen is not None:
            seen.authorization = self.headers.get("Authorization", "")
            if seen.model != state.served_model:
                self._reply(404, {"error": {"message": f"model {seen.model} not found"}})
                return
        if problems or seen is None:
            state.problems.extend(problems)
            self._reply(400, {"error": {"message": "; ".join(problems), "type": "invalid"}})
            return
        if busy or mode == "busy":
            self._reply(429, {"error": {"message": "too many requests"}}, {"Retry-After": "0"})
            return
        if mode == "fail":
            self._reply(500, {"error": {"message": "engine crashed"}})
            return
        if mode == "refuse" or seen.image_size in state.refuse_sizes:
            self._reply(400, {"error": {"message": "image too large for context"}})
            return
        if mode == "stall":
            time.sleep(state.stall_s)
        time.sleep(state.answer_delay_s)
        with state.lock:
            state.requests.append(seen)
        text = answer_for(seen.instruction, seen.image_size) + state.answer_suffix
        self._reply(
            200,
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": seen.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
            },
        )

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up waiting (a timeout test); nothing to tell it


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ServerState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@dataclass
class RunningServer:
    state: ServerState
    base_url: str  # http://127.0.0.1:PORT/v1


@contextmanager
def openai_server(served_model: str = "tiny-vlm", flavour: str = "vllm") -> Iterator[RunningServer]:
    """Serve on a free loopback port until the block ends."""
    state = ServerState(served_model=served_model, flavour=flavour)
    server = _Server(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningServer(state, f"http://127.0.0.1:{server.server_address[1]}/v1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """A loopback URL nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
