"""Replicas for tests: `captioner serve` processes (or a slowed stand-in) sharing one catalogue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from tests.support.live_server import free_port
from tests.support.prometheus import sample

CAPTIONER = str(Path(sys.executable).with_name("captioner"))
START_TIMEOUT_S = 180.0


class ReplicaProcess:
    """One replica in its own process group, so SIGKILL takes its master and worker together."""

    def __init__(self, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._command = command
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")},
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "CAPTIONER_HOST": "127.0.0.1",
            "CAPTIONER_PORT": str(self.port),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def serve(cls, env: Mapping[str, str], log: Path) -> ReplicaProcess:
        """The real `captioner serve`."""
        return cls([CAPTIONER, "serve"], env, log)

    @classmethod
    def slowed(cls, env: Mapping[str, str], log: Path, delay_s: float) -> ReplicaProcess:
        """The real app with a model that takes ``delay_s`` per caption (tests.support.slow)."""
        return cls(
            [sys.executable, "-m", "tests.support.slow_replica"],
            {**env, "TEST_CAPTION_DELAY_S": str(delay_s)},
            log,
        )

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                self._command,
                env=self._env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=Path(__file__).resolve().parents[2],  # so `-m tests.support...` imports
            )

    def wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"replica exited:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"replica not ready in time:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as when a machine is lost."""
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def upload(self, data: bytes, timeout_s: float = 120) -> requests.Response:
        return requests.post(
            f"{self.url}/upload", files={"image": ("photo.png", data)}, timeout=timeout_s
        )

    def captions_generated(self) -> float:
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        return sample(text, "captioner_captions_generated_total")
