"""Captions hold only the answer: no template scaffolding or echoed instruction, and a caption
that degenerates into repeats is cut; any other caption is left alone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from captioner.domain.caption_text import (
    LONG_PHRASE_WORDS,
    _first_loop,
    _key,
    clean_caption,
    cut_repetition,
)

words = st.text(alphabet="abcdefgh", min_size=1, max_size=6)
sentences = st.lists(words, max_size=30).map(" ".join)
# Words that never occur in a phrase, so a loop found in the lead ends before the phrase.
leads = st.lists(st.text(alphabet="0123456789", min_size=1, max_size=4), max_size=8).map(" ".join)


def test_a_word_said_over_and_over_is_said_once() -> None:
    assert cut_repetition("a dog dog dog dog dog") == "a dog"


def test_a_long_phrase_said_twice_is_said_once() -> None:
    text = "a cat sitting on a red mat, a cat sitting on a red mat, a cat sitting"
    assert cut_repetition(text) == "a cat sitting on a red mat"


def test_case_and_punctuation_do_not_hide_a_loop() -> None:
    assert cut_repetition("The sky. Sky, sky! SKY") == "The sky."


def test_ordinary_sentences_are_untouched() -> None:
    for text in (
        "A very very small dog on the grass.",
        "Two cats, two dogs and a bird.",
        "  leading and trailing spaces kept  ",
        "",
    ):
        assert cut_repetition(text) == text


@given(sentences)
def test_cutting_twice_changes_nothing_more(text: str) -> None:
    once = cut_repetition(text)
    assert cut_repetition(once) == once


@given(sentences)
def test_the_result_is_the_start_of_the_caption(text: str) -> None:
    kept = [_key(word) for word in cut_repetition(text).split()]
    assert kept == [_key(word) for word in text.split()][: len(kept)]


@given(sentences)
def test_no_loop_survives(text: str) -> None:
    assert _first_loop([_key(word) for word in cut_repetition(text).split()]) is None


@given(st.lists(words, min_size=1, max_size=6, unique=True), st.integers(3, 8), leads)
def test_a_phrase_repeated_three_or_more_times_keeps_one_copy(
    phrase: list[str], copies: int, lead: str
) -> None:
    text = " ".join([lead, *(phrase * copies)]).strip()
    cut = cut_repetition(text)
    assert len(cut.split()) <= len(text.split()) - (copies - 1) * len(phrase)


@given(st.lists(words, min_size=LONG_PHRASE_WORDS, max_size=8, unique=True))
def test_a_caption_without_any_repeated_word_is_kept_whole(phrase: list[str]) -> None:
    text = " ".join(phrase)
    assert cut_repetition(text) == text


def test_template_markers_and_the_role_name_are_removed() -> None:
    raw = "Assistant: A red square on a table.<end_of_utterance>\n<|im_end|></s>"
    assert clean_caption(raw) == "A red square on a table."


def test_an_echoed_instruction_is_removed() -> None:
    raw = "Describe this image in one sentence. A cat on a mat."
    assert clean_caption(raw, "Describe this image in one sentence.") == "A cat on a mat."


def test_a_florence_task_prompt_is_never_left_in() -> None:
    assert clean_caption("<CAPTION> a dog in a field", "<CAPTION>") == "a dog in a field"


def test_a_caption_that_merely_starts_with_assistant_is_kept() -> None:
    assert clean_caption("Assistant chefs cooking in a kitchen") == (
        "Assistant chefs cooking in a kitchen"
    )


markers = st.sampled_from(["<image>", "</s>", "<|im_end|>", "<end_of_utterance>", "<pad>"])


@given(st.lists(st.one_of(words, markers), max_size=20))
def test_no_marker_survives_cleaning(parts: list[str]) -> None:
    cleaned = clean_caption(" ".join(parts))
    assert "<" not in cleaned
    assert ">" not in cleaned


@given(sentences, sentences)
def test_an_echoed_instruction_never_changes_the_answer(instruction: str, answer: str) -> None:
    if instruction.strip():
        echoed = clean_caption(f"{instruction} {answer}", instruction)
        assert echoed == clean_caption(answer)
