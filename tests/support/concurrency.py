"""Requests released together from many threads, for races against a live server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import requests


def all_at_once(count: int, send: Callable[[int], requests.Response]) -> list[requests.Response]:
    """Send ``count`` requests from as many threads, released together."""
    gate = threading.Barrier(count)

    def go(index: int) -> requests.Response:
        gate.wait()
        return send(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(go, range(count)))
