"""The service and API keys a command works with, open for as long as it runs."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator

from captioner.config import Settings
from captioner.container import Container, opened
from captioner.domain.access import AccessService
from captioner.domain.errors import CaptionerUnavailable
from captioner.domain.service import CaptionService

# Builds the container for one command: (settings, load_model). Tests pass one that overrides
# providers with fakes; the CLI itself uses build_container.
ContainerFactory = Callable[[Settings, bool], Container]


@contextlib.contextmanager
def opened_access(settings: Settings, args: argparse.Namespace) -> Iterator[AccessService]:
    """The API keys for one command; the database closes when it is done."""
    with opened(args.containers(settings, False)) as container:
        yield container.access()


@contextlib.contextmanager
def opened_service(
    settings: Settings, args: argparse.Namespace, load_model: bool = True
) -> Iterator[CaptionService]:
    """The service for one command; the model worker and database close when it is done.

    ``load_model=False``: the model loads when ``wait_until_ready`` is first called.
    """
    containers: ContainerFactory = args.containers
    with opened(containers(settings, load_model)) as container:
        yield container.service()


def model_loaded(service: CaptionService, settings: Settings) -> bool:
    """Load the model, saying so on stderr; False (the reason printed) when it cannot load."""
    print(f"captioner: loading model {settings.model}...", file=sys.stderr, flush=True)
    try:
        readiness = service.wait_until_ready()
    except CaptionerUnavailable as failed:  # the model failed to load: the message says why
        print(f"captioner: {failed}", file=sys.stderr)
        return False
    if not readiness.ready:
        print(f"captioner: {readiness.reason}", file=sys.stderr)
    return readiness.ready
