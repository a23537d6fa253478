"""The words of hub.services.search: what both backends index and match, cut in one place."""
from __future__ import annotations

import pytest

from hub.errors import InvalidRequest
from hub.services.search import MAX_WORD_LENGTH, MAX_WORDS, Terms, document, words


def test_words_are_runs_of_letters_and_digits_case_and_accents_folded():
    assert words("Mistral-7B_v0.1 (SQL)") == ["mistral", "7b", "v0", "1", "sql"]
    assert words("Café CRÈME naïve Straße") == ["cafe", "creme", "naive", "strasse"]
    assert words("ﬁne-tuned ２０２４") == ["fine", "tuned", "2024"]  # compatibility forms
    assert words("日本語のテキスト") == ["日本語のテキスト"]
    assert words("\"a\" OR -b* NEAR(c)") == ["a", "or", "b", "near", "c"]
    assert words("") == words(None) == words("!!! ... ---") == []


def test_words_are_cut_so_every_backend_can_index_them():
    assert words("x" * 5000) == ["x" * MAX_WORD_LENGTH]


def test_the_document_holds_name_tags_and_description_as_words():
    assert document("Llama-2-chat", ["text-generation", "en"], "Chats, politely.") == {
        "search_name": "llama 2 chat", "search_tags": "text generation en",
        "search_text": "chats politely"}


def test_terms_fold_repeats_and_refuse_too_many_words():
    assert Terms.parse("SQL sql Mistral").words == ("sql", "mistral")
    assert not Terms.parse("  --  ")
    with pytest.raises(InvalidRequest):
        Terms.parse(" ".join(f"w{i}" for i in range(MAX_WORDS + 1)))
