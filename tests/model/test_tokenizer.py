from __future__ import annotations

import pytest

from model import CLS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer


@pytest.mark.parametrize("text", ["안녕하세요, 반갑습니다", "こんにちは（＾ω＾）", "(◕‿◕)", "plain ascii"])
def test_korean_japanese_and_kaomoji_round_trip(text):
    tok = ByteTokenizer(max_length=256)
    ids = tok.encode(text)
    assert ids[0] == CLS_ID
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert tok.decode(ids) == text


def test_truncation_keeps_max_length_and_drops_a_cut_character():
    tok = ByteTokenizer(max_length=5)
    ids = tok.encode("한국어")  # 9 bytes; CLS + 4 bytes keeps one whole 3-byte character
    assert len(ids) == 5
    assert tok.decode(ids) == "한"


def test_batch_pads_right_and_masks_padding():
    ids, mask = ByteTokenizer(max_length=16).encode_batch(["ab", "abcd"])
    assert ids.shape == (2, 5)
    assert ids[0].tolist() == [CLS_ID, 97, 98, PAD_ID, PAD_ID]
    assert mask[0].tolist() == [True, True, True, False, False]
    assert mask[1].all()


def test_a_megabyte_text_is_truncated_not_a_crash():
    ids, _ = ByteTokenizer(max_length=64).encode_batch(["가" * 400_000])
    assert ids.shape == (1, 64)


def test_max_length_below_two_is_rejected():
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        ByteTokenizer(max_length=1)
