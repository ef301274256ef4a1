"""The catalogue contract: every CaptionRepository adapter (SQLite, PostgreSQL) passes it alike."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

from captioner.domain.model import (
    PERSON_MODEL,
    CaptionChoice,
    CaptionKey,
    Claim,
    ImageDigest,
    ImageUpload,
    NewImageRecord,
    Provenance,
)
from captioner.domain.ports import CaptionQueue, CaptionRepository
from captioner.domain.service import CaptionService
from tests.support.fakes import FakeCaptioner, FakeImageDecoder, InMemoryImageStore, fake_image
from tests.support.records import new_record as new

# Opens another handle on the same catalogue: another process, or another replica.
OpenCatalogue = Callable[[], CaptionRepository]

KEY = CaptionKey("a" * 64, "m", "")


@pytest.fixture(params=["sqlite", "postgresql"])
def open_catalogue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenCatalogue]:
    handles: list[Any] = []
    if request.param == "sqlite":
        from captioner.adapters.catalogue.sqlite import SqliteCaptionRepository

        def opener() -> CaptionRepository:
            handles.append(SqliteCaptionRepository(tmp_path / "db.sqlite3", claim_poll_s=0.02))
            return handles[-1]  # type: ignore[no-any-return]
    else:
        from captioner.adapters.catalogue.postgres import PostgresCaptionRepository

        url: str = request.getfixturevalue("postgres_url")

        def opener() -> CaptionRepository:
            handles.append(PostgresCaptionRepository(url, max_connections=10, claim_poll_s=0.2))
            return handles[-1]  # type: ignore[no-any-return]

    yield opener
    for handle in handles:
        handle.close()


@pytest.fixture
def catalogue(open_catalogue: OpenCatalogue) -> CaptionRepository:
    return open_catalogue()


def test_unique_key_returns_the_existing_row_instead_of_a_second(
    catalogue: CaptionRepository,
) -> None:
    one, created_one = catalogue.add(new("a", "first"))
    two, created_two = catalogue.add(new("a", "second"))
    other_model, created_three = catalogue.add(new("a", "third", model="other"))

    assert (created_one, created_two, created_three) == (True, False, True)
    assert two == one
    assert other_model.id != one.id
    assert catalogue.find("a" * 64, "m", "") == one
    assert catalogue.get(one.id) == one


def test_records_keep_every_field_and_a_timezone_aware_time(catalogue: CaptionRepository) -> None:
    record, _ = catalogue.add(new("a", "a cat", prompt="describe"))

    assert (record.sha256, record.path, record.description) == ("a" * 64, "uploads/a.png", "a cat")
    assert (record.model, record.prompt, record.width, record.height) == ("m", "describe", 10, 20)
    assert (record.content_type, record.original_name) == ("image/png", "photo.png")
    assert record.created_at.tzinfo is not None


def test_listing_is_newest_first_and_pages_by_id(catalogue: CaptionRepository) -> None:
    ids = [catalogue.add(new(c))[0].id for c in "abcde"]

    assert [r.record.id for r in catalogue.list(2)] == ids[::-1][:2]
    assert [r.record.id for r in catalogue.list(10, before=ids[2])] == ids[:2][::-1]


def test_ids_beyond_any_the_database_can_hold_name_no_image(
    catalogue: CaptionRepository,
) -> None:
    record, _ = catalogue.add(new("a"))

    assert catalogue.get(2**70) is None
    assert catalogue.delete(2**70) is None
    assert [r.record.id for r in catalogue.list(10, before=2**70)] == [record.id]
    assert [r.record.id for r in catalogue.list(10, before=2**70, query="cat")] == [record.id]


def test_search_ranks_by_words_in_descriptions(catalogue: CaptionRepository) -> None:
    catalogue.add(new("a", "a dog running on the beach"))
    cat, _ = catalogue.add(new("b", "a cat sleeping on a cat bed"))
    catalogue.add(new("c", "a red car"))
    once, _ = catalogue.add(new("d", "a cat on a red car"))

    assert [r.record.id for r in catalogue.list(10, query="cat")] == [cat.id, once.id]
    assert [r.record.description for r in catalogue.list(10, query="DOG beach")] == [
        "a dog running on the beach"
    ]
    assert catalogue.list(10, query="giraffe") == []


def test_search_finds_words_by_their_beginning(catalogue: CaptionRepository) -> None:
    record, _ = catalogue.add(new("a", "a skateboarder jumping"))

    assert [r.record.id for r in catalogue.list(10, query="skate jump")] == [record.id]
    assert catalogue.list(10, query="boarder") == []


@pytest.mark.parametrize(
    "query",
    [
        '"',
        "*",
        'cat"',
        "NEAR(",
        "a OR",
        "-",
        "^",
        "cat AND",
        "''",
        "(((",
        "\x00",
        "🐱",
        "a:*",
        "!&|",
    ],
)
def test_search_with_query_syntax_characters_never_fails(
    catalogue: CaptionRepository, query: str
) -> None:
    catalogue.add(new("a", "a cat"))
    catalogue.list(10, query=query)  # must not raise


def test_delete_returns_the_row_and_updates_the_search_index(catalogue: CaptionRepository) -> None:
    record, _ = catalogue.add(new("a", "a unique zebra"))
    assert catalogue.delete(record.id) == record
    assert catalogue.delete(record.id) is None
    assert catalogue.list(10, query="zebra") == []
    assert catalogue.count_with_path(record.path) == 0


def test_many_threads_write_at_once(catalogue: CaptionRepository) -> None:
    def writer(n: int) -> None:
        for i in range(10):
            catalogue.add(new(f"{n:032x}{i:032x}"))
            catalogue.list(5)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(8)))

    assert len(list(catalogue.all_records())) == 80


def test_walking_all_records_pages_through_a_big_catalogue(catalogue: CaptionRepository) -> None:
    for n in range(1200):
        catalogue.add(new(f"{n:064x}"))
    ids = [record.id for record in catalogue.all_records()]
    assert ids == sorted(ids)
    assert len(ids) == 1200


def test_a_ready_catalogue_says_so(catalogue: CaptionRepository) -> None:
    assert catalogue.readiness().ready


# Claims: one model run per key, among every handle on the catalogue.


def test_only_one_of_many_replicas_claims_a_key(open_catalogue: OpenCatalogue) -> None:
    replicas = [open_catalogue() for _ in range(3)]

    with ThreadPoolExecutor(12) as pool:
        claims = list(pool.map(lambda n: replicas[n % 3].claim(KEY, 30), range(12)))

    assert len([c for c in claims if c is not None]) == 1


def test_a_claim_is_never_listed_or_counted_as_an_image(catalogue: CaptionRepository) -> None:
    assert catalogue.claim(KEY, 30) is not None

    assert catalogue.list(10) == []
    assert list(catalogue.all_records()) == []
    assert catalogue.find(KEY.sha256, KEY.model, KEY.prompt) is None
    assert catalogue.count_with_path("uploads/a.png") == 0


def test_completing_stores_the_record_and_frees_the_key(catalogue: CaptionRepository) -> None:
    claim = catalogue.claim(KEY, 30)
    assert claim is not None

    record, created = catalogue.complete(claim, new("a"))

    assert created
    assert catalogue.find(KEY.sha256, KEY.model, KEY.prompt) == record
    assert catalogue.await_record(KEY, 0.1) == record


def test_completing_a_key_stored_meanwhile_returns_that_record(
    catalogue: CaptionRepository,
) -> None:
    claim = catalogue.claim(KEY, 30)
    assert claim is not None
    first, _ = catalogue.add(new("a", "first"))

    record, created = catalogue.complete(claim, new("a", "second"))

    assert (record, created) == (first, False)


def test_an_expired_claim_is_taken_over(open_catalogue: OpenCatalogue) -> None:
    dead, alive = open_catalogue(), open_catalogue()
    assert dead.claim(KEY, 0.2) is not None
    assert alive.claim(KEY, 30) is None

    time.sleep(0.3)
    taken = alive.claim(KEY, 30)

    assert taken is not None
    assert dead.claim(KEY, 30) is None


def test_renewing_keeps_a_claim_past_its_first_lease(open_catalogue: OpenCatalogue) -> None:
    holder, other = open_catalogue(), open_catalogue()
    claim = holder.claim(KEY, 0.3)
    assert claim is not None

    for _ in range(3):
        time.sleep(0.15)
        assert holder.renew(claim, 0.3)

    assert other.claim(KEY, 30) is None


def test_a_claim_taken_over_cannot_be_renewed_or_released_by_its_old_owner(
    open_catalogue: OpenCatalogue,
) -> None:
    old_owner, new_owner = open_catalogue(), open_catalogue()
    stale = old_owner.claim(KEY, 0.1)
    assert stale is not None
    time.sleep(0.2)
    current = new_owner.claim(KEY, 30)
    assert current is not None

    assert not old_owner.renew(stale, 30)
    old_owner.abandon(stale)

    assert old_owner.claim(KEY, 30) is None  # the new owner's claim still holds


def test_a_waiter_gets_the_record_the_claimant_completes(open_catalogue: OpenCatalogue) -> None:
    claimant, waiter = open_catalogue(), open_catalogue()
    claim = claimant.claim(KEY, 30)
    assert claim is not None
    stored: list[Any] = []
    threading.Timer(0.3, lambda: stored.append(claimant.complete(claim, new("a")))).start()

    started = time.monotonic()
    record = waiter.await_record(KEY, 10)

    assert record is not None
    assert time.monotonic() - started < 5
    assert record == stored[0][0]


def test_a_waiter_is_let_go_when_the_claim_is_abandoned(open_catalogue: OpenCatalogue) -> None:
    claimant, waiter = open_catalogue(), open_catalogue()
    claim = claimant.claim(KEY, 30)
    assert claim is not None
    threading.Timer(0.3, claimant.abandon, args=(claim,)).start()

    started = time.monotonic()
    assert waiter.await_record(KEY, 10) is None
    assert time.monotonic() - started < 5
    assert waiter.claim(KEY, 30) is not None


def test_a_waiter_is_let_go_when_the_lease_runs_out(open_catalogue: OpenCatalogue) -> None:
    claimant, waiter = open_catalogue(), open_catalogue()
    assert claimant.claim(KEY, 0.5) is not None

    started = time.monotonic()
    assert waiter.await_record(KEY, 10) is None
    assert 0.3 < time.monotonic() - started < 5


def test_waiting_is_bounded(open_catalogue: OpenCatalogue) -> None:
    claimant, waiter = open_catalogue(), open_catalogue()
    assert claimant.claim(KEY, 30) is not None

    started = time.monotonic()
    assert waiter.await_record(KEY, 0.4) is None
    assert 0.3 < time.monotonic() - started < 3


def test_awaiting_a_key_nobody_holds_returns_at_once(catalogue: CaptionRepository) -> None:
    started = time.monotonic()
    assert catalogue.await_record(KEY, 10) is None
    assert time.monotonic() - started < 2


def test_claims_on_other_keys_do_not_interfere(catalogue: CaptionRepository) -> None:
    first = catalogue.claim(KEY, 30)
    other_prompt = catalogue.claim(CaptionKey(KEY.sha256, KEY.model, "other"), 30)
    other_model = catalogue.claim(CaptionKey(KEY.sha256, "other", KEY.prompt), 30)

    assert all(isinstance(c, Claim) for c in (first, other_prompt, other_model))


def _keys(*tags: str, prompt: str = "") -> list[CaptionKey]:
    return [CaptionKey(tag * 64, "m", prompt) for tag in tags]


def test_claiming_many_takes_the_free_and_expired_keys_and_leaves_the_held(
    open_catalogue: OpenCatalogue,
) -> None:
    other, bulk = open_catalogue(), open_catalogue()
    held, lapsed, free, also_free = _keys("a", "b", "c", "d")
    assert other.claim(held, 30) is not None
    assert other.claim(lapsed, 0.1) is not None
    time.sleep(0.2)

    claims = bulk.claim_many([held, lapsed, free, also_free, free], 30)

    assert set(claims) == {lapsed, free, also_free}
    assert {claim.key for claim in claims.values()} == {lapsed, free, also_free}
    assert len({claim.owner for claim in claims.values()}) == 1  # one owner for the batch
    assert other.claim_many([lapsed, free, also_free], 30) == {}
    assert all(bulk.renew(claim, 30) for claim in claims.values())


def test_completing_many_keeps_each_record_and_releases_each_claim_in_one_step(
    open_catalogue: OpenCatalogue,
) -> None:
    bulk, waiter = open_catalogue(), open_catalogue()
    first, second, taken = _keys("a", "b", "c")
    existing, _ = bulk.add(new("c", "stored before"))
    claims = bulk.claim_many([first, second, taken, *_keys("a", prompt="other")], 30)
    woken: list[Any] = []
    waiting = threading.Thread(target=lambda: woken.append(waiter.await_record(second, 10)))
    waiting.start()

    stored = bulk.complete_many(
        [
            (claims[first], new("a", "one")),
            (claims[second], new("b", "two")),
            (claims[taken], new("c", "a second caption")),
        ]
    )
    waiting.join()

    assert [(record.description, created) for record, created, _ in stored] == [
        ("one", True),
        ("two", True),
        ("stored before", False),
    ]
    assert stored[2][0] == existing
    assert woken == [stored[1][0]]
    assert waiter.find_many(["a" * 64, "b" * 64], "m", "") != []
    assert set(waiter.claim_many([first, second, taken], 30)) == {first, second, taken}
    # The claim that was not completed stays its owner's.
    assert waiter.claim_many(_keys("a", prompt="other"), 30) == {}


def test_releasing_many_gives_every_claim_back(open_catalogue: OpenCatalogue) -> None:
    bulk, other = open_catalogue(), open_catalogue()
    keys = _keys("a", "b", "c")
    claims = bulk.claim_many(keys, 30)

    bulk.release(list(claims.values()))

    assert set(other.claim_many(keys, 30)) == set(keys)
    assert bulk.find_many([key.sha256 for key in keys], "m", "") == []


def _made_by(record: NewImageRecord, revision: str | None) -> NewImageRecord:
    return dataclasses.replace(record, provenance=Provenance.of(revision, {}))


MODEL_DIR = "/srv/models/tiny-blip"  # the canonical name: absolute, no trailing slash
SPELLINGS = ("models/tiny-blip", "./models/tiny-blip", "models/tiny-blip/")


def test_records_of_other_spellings_with_the_same_weights_are_renamed_to_the_model(
    catalogue: CaptionRepository,
) -> None:
    kept = catalogue.add(_made_by(new("a", "first", model=SPELLINGS[0]), "sha256:r"))[0]
    catalogue.add(_made_by(new("a", "again", model=SPELLINGS[1]), "sha256:r"))  # same image
    other = catalogue.add(_made_by(new("b", model=SPELLINGS[2]), "sha256:r"))[0]
    older_weights = catalogue.add(_made_by(new("c", model=SPELLINGS[0]), "sha256:old"))[0]

    assert catalogue.models_with_revision("sha256:r") == sorted(SPELLINGS)
    assert catalogue.adopt_records(SPELLINGS, MODEL_DIR, "sha256:r") == 2

    # One record per image stays: the oldest, under the model's one name.
    assert catalogue.find("a" * 64, MODEL_DIR, "") == dataclasses.replace(kept, model=MODEL_DIR)
    assert [r.id for r in catalogue.captions_of("a" * 64)] == [kept.id]
    assert catalogue.get(other.id) == dataclasses.replace(other, model=MODEL_DIR)
    assert catalogue.get(older_weights.id) == older_weights  # other weights: not this model
    assert catalogue.models_with_revision("sha256:r") == [MODEL_DIR]


def test_adopting_keeps_the_models_own_record_where_both_exist(
    catalogue: CaptionRepository,
) -> None:
    alias = catalogue.add(_made_by(new("a", "old", model=SPELLINGS[0]), "sha256:r"))[0]
    own = catalogue.add(_made_by(new("a", "new", model=MODEL_DIR), "sha256:r"))[0]
    hub = catalogue.add(_made_by(new("a", model="org/tiny-blip"), "0123abcd"))[0]

    assert catalogue.adopt_records([SPELLINGS[0]], MODEL_DIR, "sha256:r") == 0

    assert catalogue.get(alias.id) is None
    assert catalogue.find("a" * 64, MODEL_DIR, "") == own
    assert catalogue.get(hub.id) == hub
    # The key is free for new records of the old spelling (an older captioner still running).
    assert catalogue.add(new("a", model=SPELLINGS[0]))[1] is True


def test_a_service_answers_records_of_every_spelling_without_running_the_model(
    catalogue: CaptionRepository,
) -> None:
    captioner = FakeCaptioner(model_name=MODEL_DIR)
    captioner.revision = "sha256:weights"
    images = [fake_image(name) for name in ("cat", "dog", "owl")]
    for image, spelling in zip(images, SPELLINGS, strict=True):
        stored = new(ImageDigest.of_bytes(image).hex, model=spelling)
        catalogue.add(_made_by(stored, "sha256:weights"))
    service = CaptionService(captioner, FakeImageDecoder(), InMemoryImageStore(), catalogue)

    known = service.known([ImageDigest.of_bytes(image).hex for image in images])
    answers = [service.describe(ImageUpload(io.BytesIO(image), "a.png")) for image in images]

    assert not known.unknown
    assert all(answer.duplicate for answer in answers)
    assert {answer.record.model for answer in answers} == {MODEL_DIR}
    assert captioner.call_count == 0
    assert service.count_waiting_for_caption() == 0


CURRENT = CaptionChoice(model="m", prompt="")


def test_a_listing_shows_each_image_once_with_its_current_caption(
    catalogue: CaptionRepository,
) -> None:
    first, _ = catalogue.add(new("a", "a cat by m"))
    catalogue.add(new("a", "a cat asked about", prompt="describe"))
    newest_of_b, _ = catalogue.add(new("b", "a dog by other", model="other"))
    catalogue.add(new("a", "a cat by other", model="other"))

    listed = catalogue.list(10, shown=CURRENT)

    assert [(e.record.sha256[0], e.record.description) for e in listed] == [
        ("b", "a dog by other"),  # m never described it: its newest caption
        ("a", "a cat by m"),  # m's default-prompt caption beats newer ones
    ]
    assert [(e.image_id, e.captions) for e in listed] == [(newest_of_b.id, 1), (first.id, 3)]


def test_a_listing_by_model_shows_only_that_models_captions(catalogue: CaptionRepository) -> None:
    catalogue.add(new("a", "a cat by m"))
    catalogue.add(new("b", "a dog by m"))
    catalogue.add(new("a", "a cat asked of other", model="other", prompt="describe"))
    newest, _ = catalogue.add(new("a", "a cat asked again", model="other", prompt="again"))

    listed = catalogue.list(10, shown=CaptionChoice(model="other", prompt="", only_model=True))
    default_first = catalogue.list(
        10, shown=CaptionChoice(model="other", prompt="describe", only_model=True)
    )

    assert [e.record.id for e in listed] == [newest.id]
    assert [e.record.description for e in default_first] == ["a cat asked of other"]


def test_search_matches_the_shown_caption_not_the_images_other_captions(
    catalogue: CaptionRepository,
) -> None:
    catalogue.add(new("a", "a zebra in the grass", model="old"))
    catalogue.add(new("a", "a horse in a field"))  # m's: the current caption

    assert catalogue.list(10, query="zebra", shown=CURRENT) == []
    assert [e.record.description for e in catalogue.list(10, query="horse", shown=CURRENT)] == [
        "a horse in a field"
    ]
    by_old = CaptionChoice(model="old", prompt="", only_model=True)
    assert [e.record.description for e in catalogue.list(10, query="zebra", shown=by_old)] == [
        "a zebra in the grass"
    ]


def test_pages_of_images_have_no_repeats_and_no_gaps(catalogue: CaptionRepository) -> None:
    for tag in "abcdef":
        catalogue.add(new(tag))
    for tag in "fdb":  # re-captions of some images, newest rows last
        catalogue.add(new(tag, "again", model="other"))

    seen: list[str] = []
    before = None
    while True:
        page = catalogue.list(2, before=before, shown=CURRENT)
        if not page:
            break
        seen += [e.record.sha256[0] for e in page]
        before = page[-1].image_id

    assert seen == list("fedcba")


def test_models_lists_every_model_with_its_number_of_images(catalogue: CaptionRepository) -> None:
    catalogue.add(new("a"))
    catalogue.add(new("a", prompt="describe"))
    catalogue.add(new("b"))
    catalogue.add(new("b", model="other"))

    assert [(m.model, m.images) for m in catalogue.models()] == [("m", 2), ("other", 1)]


def test_deleting_an_image_removes_every_caption_of_its_bytes(
    catalogue: CaptionRepository,
) -> None:
    one, _ = catalogue.add(new("a"))
    two, _ = catalogue.add(new("a", model="other"))
    kept, _ = catalogue.add(new("b"))

    assert catalogue.delete_image("a" * 64) == [one, two]
    assert catalogue.delete_image("a" * 64) == []
    assert [e.record.id for e in catalogue.list(10, shown=CURRENT)] == [kept.id]
    assert catalogue.list(10, query="cat", shown=CURRENT)[0].record == kept


# --- a person's caption (model "person") -------------------------------------------------


def _person(sha: str, text: str) -> NewImageRecord:
    return dataclasses.replace(
        new(sha, text, model=PERSON_MODEL),
        provenance=Provenance.of(None, {"source": "person", "by": "ann", "at": "t"}),
    )


def test_a_persons_caption_is_shown_and_searched_before_the_models(
    catalogue: CaptionRepository,
) -> None:
    model_caption, _ = catalogue.add(new("a", "a dog on grass"))
    person = catalogue.replace(_person("a", "a fox in the snow"))
    shown = CaptionChoice(model="m", prompt="")

    assert person is not None
    assert person.source == "person"
    assert [e.record for e in catalogue.list(10, shown=shown)] == [person]
    assert [e.record for e in catalogue.list(10, query="fox", shown=shown)] == [person]
    assert catalogue.list(10, query="dog", shown=shown) == []  # the shown caption is searched
    assert [
        e.record for e in catalogue.list(10, shown=dataclasses.replace(shown, only_model=True))
    ] == [model_caption]
    assert catalogue.captions_of("a" * 64) == [model_caption, person]


def test_a_second_edit_replaces_the_first_and_the_search_follows(
    catalogue: CaptionRepository,
) -> None:
    catalogue.add(new("a", "a dog on grass"))
    first = catalogue.replace(_person("a", "a fox in the snow"))
    second = catalogue.replace(_person("a", "a hare in the heather"))
    shown = CaptionChoice(model="m", prompt="")

    assert first is not None
    assert second is not None
    assert second.id == first.id
    assert second.description == "a hare in the heather"
    assert catalogue.list(10, query="fox", shown=shown) == []
    assert [e.record for e in catalogue.list(10, query="heather", shown=shown)] == [second]
    assert len(catalogue.captions_of("a" * 64)) == 2


def test_an_edit_of_an_image_deleted_meanwhile_keeps_nothing(catalogue: CaptionRepository) -> None:
    assert catalogue.replace(_person("a", "a fox")) is None
    assert list(catalogue.all_records()) == []


def test_deleting_a_models_captions_keeps_the_images_last_record(
    catalogue: CaptionRepository,
) -> None:
    model_caption, _ = catalogue.add(new("a", "a dog"))
    person = catalogue.replace(_person("a", "a fox"))
    only = catalogue.replace(_person("b", "never stored"))  # no record of b: nothing kept

    assert catalogue.delete_captions("a" * 64, PERSON_MODEL) == [person]
    assert catalogue.captions_of("a" * 64) == [model_caption]
    assert only is None
    assert catalogue.delete_captions("a" * 64, "m") == []  # its only caption stays


# --- deletes of bytes in flight -------------------------------------------------------------


def test_a_delete_in_flight_is_seen_by_another_replica_and_by_its_claims(
    open_catalogue: OpenCatalogue,
) -> None:
    deleting, uploading = open_catalogue(), open_catalogue()
    quiet = uploading.deletes_of(KEY.sha256)

    deleting.begin_delete(KEY.sha256)
    claim = uploading.claim(KEY, 30)
    in_flight = uploading.deletes_of(KEY.sha256)
    deleting.end_delete(KEY.sha256, forget_after_s=3600, stale_after_s=3600)
    done = uploading.deletes_of(KEY.sha256)

    assert claim is not None
    assert (quiet.running, quiet.ticket) == (0, "")
    assert (claim.deletes.running, claim.deletes.ticket) == (1, in_flight.ticket)
    assert in_flight.running == 1
    assert in_flight.ticket != ""
    assert (done.running, done.ticket) == (0, in_flight.ticket)  # a finish leaves the ticket
    assert uploading.deletes_of("b" * 64).running == 0  # other bytes: nothing in flight


def test_batched_claims_and_writes_carry_the_marks_of_deletes_of_their_bytes(
    open_catalogue: OpenCatalogue,
) -> None:
    deleting, bulk = open_catalogue(), open_catalogue()
    being_deleted, quiet = _keys("a", "b")
    deleting.begin_delete(being_deleted.sha256)

    claims = bulk.claim_many([being_deleted, quiet], 30)
    stored = bulk.complete_many(
        [(claims[being_deleted], new("a", "one")), (claims[quiet], new("b", "two"))]
    )
    ticket = bulk.deletes_of(being_deleted.sha256).ticket

    seen = {key: (claim.deletes.running, claim.deletes.ticket) for key, claim in claims.items()}
    assert seen == {being_deleted: (1, ticket), quiet: (0, "")}
    assert [(marks.running, marks.ticket) for _, _, marks in stored] == [(1, ticket), (0, "")]


def test_each_delete_that_begins_leaves_a_new_ticket(catalogue: CaptionRepository) -> None:
    catalogue.begin_delete(KEY.sha256)
    first = catalogue.deletes_of(KEY.sha256)
    catalogue.begin_delete(KEY.sha256)
    both = catalogue.deletes_of(KEY.sha256)
    catalogue.end_delete(KEY.sha256, forget_after_s=3600, stale_after_s=3600)
    catalogue.end_delete(KEY.sha256, forget_after_s=3600, stale_after_s=3600)
    catalogue.end_delete(
        KEY.sha256, forget_after_s=3600, stale_after_s=3600
    )  # one too many counts no lower

    assert both.running == 2
    assert both.ticket != first.ticket
    assert catalogue.deletes_of(KEY.sha256).running == 0


def test_finished_deletes_are_forgotten_and_dead_ones_counted_finished_under_a_new_ticket(
    catalogue: CaptionRepository,
) -> None:
    died = "c" * 64
    catalogue.begin_delete(died)  # never ends: its replica was killed
    catalogue.begin_delete(KEY.sha256)
    catalogue.end_delete(KEY.sha256, forget_after_s=3600, stale_after_s=3600)
    time.sleep(0.05)
    dying = catalogue.deletes_of(died)
    catalogue.begin_delete("d" * 64)
    catalogue.end_delete("d" * 64, forget_after_s=3600, stale_after_s=3600)
    still = catalogue.deletes_of(died)

    catalogue.end_delete("d" * 64, forget_after_s=0.01, stale_after_s=0.01)

    dead, forgotten = catalogue.deletes_of(died), catalogue.deletes_of(KEY.sha256)
    assert (still.running, still.ticket) == (1, dying.ticket)  # not an hour old: in flight
    assert dead.running == 0
    assert dead.ticket not in ("", dying.ticket)  # uploads that read it before re-check
    assert (forgotten.running, forgotten.ticket) == (0, "")


def test_lookups_and_inserts_of_bytes_being_deleted_say_so(
    open_catalogue: OpenCatalogue,
) -> None:
    deleting, uploading = open_catalogue(), open_catalogue()
    nothing, quiet = uploading.find_seeing_deletes(KEY.sha256, "m", "")
    deleting.begin_delete(KEY.sha256)

    added, created, at_add = uploading.add_seeing_deletes(new("a", "a cat"))
    found, at_find = uploading.find_seeing_deletes(KEY.sha256, "m", "")
    queue = cast(CaptionQueue, uploading)  # both engines keep the queue in the catalogue
    queued, _, at_enqueue = queue.enqueue_seeing_deletes(new("a", "", model="queued"))
    again, created_again, at_second_add = uploading.add_seeing_deletes(new("a", "a dog"))

    assert nothing is None
    assert (quiet.running, quiet.ticket) == (0, "")
    assert created
    assert found == added
    assert queued.status == "pending"
    assert [m.running for m in (at_add, at_find, at_enqueue)] == [1, 1, 1]
    assert at_add.ticket == at_find.ticket == at_enqueue.ticket != ""
    assert (again, created_again) == (added, False)
    assert at_second_add.running == -1  # no record made: the marks are not vouched for
