import pytest

from training.tokenizer import CHARACTERS, EOS_ID, PAD_ID, TOKENIZER, UnknownCharacterError


def test_special_ids_and_vocab():
    assert PAD_ID == 0 and EOS_ID == 1
    assert TOKENIZER.vocab_size == 2 + len(CHARACTERS) == 16


def test_round_trip_every_character():
    text = "0123456789+-*=" + "3141592653=" + "007+042="
    ids = TOKENIZER.encode(text)
    assert len(ids) == len(text)
    assert all(i >= 2 for i in ids), "characters must not collide with PAD or EOS"
    assert TOKENIZER.decode(ids) == text


def test_decode_stops_at_eos_and_skips_pad():
    ids = TOKENIZER.encode("12") + [EOS_ID] + TOKENIZER.encode("9") + [PAD_ID, PAD_ID]
    assert TOKENIZER.decode(ids) == "12"
    assert TOKENIZER.decode(ids, stop_at_eos=False) == "12$9"
    assert TOKENIZER.decode([PAD_ID] + TOKENIZER.encode("5")) == "5"


def test_unknown_character_is_one_clear_error():
    with pytest.raises(UnknownCharacterError, match="'x'"):
        TOKENIZER.encode("1x2")
