"""One model, one name: records kept under other spellings of a local model's directory
are renamed to the name it is loaded under."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import PurePath

from captioner.domain.errors import CaptionerError
from captioner.domain.ports import Captioner, CaptionRepository

log = logging.getLogger(__name__)


class EarlierSpellings:
    """Adopts, once, the records an earlier spelling of the loaded model's directory made."""

    def __init__(self, captioner: Captioner, repository: CaptionRepository) -> None:
        self._captioner = captioner
        self._repository = repository
        self._adopted = False
        self._lock = threading.Lock()

    def adopt(self) -> int:
        """Move records stored under other spellings of the model's directory to its name.

        A local model is named by its absolute path; records stored before under
        ``models/x``, ``./models/x/`` or the same directory seen from elsewhere carry that
        spelling instead. Those made by the same weights (equal ``model_revision``, known once
        the model has loaded) and naming a directory of the same name are the same model's:
        they are renamed, so nothing is captioned twice. Runs once, as soon as the revision is
        known (every caption and lookup path calls it); returns the records adopted.
        """
        if self._adopted:
            return 0
        name = self._captioner.model_name
        if not os.path.isabs(name):  # a hub id or a served model: one spelling only
            self._adopted = True
            return 0
        revision = self._captioner.provenance.model_revision
        if revision is None:
            return 0  # not loaded yet: the next call looks again
        with self._lock:
            if self._adopted:
                return 0
            try:
                aliases = [
                    model
                    for model in self._repository.models_with_revision(revision)
                    if _spells_same_directory(model, name)
                ]
                adopted = self._repository.adopt_records(aliases, name, revision) if aliases else 0
            except CaptionerError as error:  # the catalogue is down: try again on next use
                log.warning("records under other spellings of %s not adopted yet: %s", name, error)
                return 0
            self._adopted = True
        if adopted:
            log.info(
                "%d record(s) stored under %s now carry the model's name %s",
                adopted,
                ", ".join(aliases),
                name,
            )
        return adopted


def _spells_same_directory(other: str, model: str) -> bool:
    """Whether ``other`` may name the directory ``model`` (an absolute path) another way:
    relative, with ``./`` or a trailing slash, or from another working directory. The
    caller has checked the weights are the same; the directory's own name must be too."""
    if other == model or other.startswith("openai:"):
        return False
    tail = PurePath(other.replace("\\", "/").rstrip("/")).name
    return tail == PurePath(model).name
