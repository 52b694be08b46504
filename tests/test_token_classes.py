"""Token classes of text (evaluation/token_classes.py), each row labelled by hand."""

import numpy as np
import pytest

from cyb_jax.data import tokenizer as tokenizer_lib
from cyb_jax.evaluation import token_classes

WI, CONT, PUNCT, SPACE, CAP, C_FIRST, C_LATER = token_classes.CLASSES


def labels(pieces):
  table = token_classes.classify(pieces)
  assert table.shape == (len(pieces), len(token_classes.CLASSES))
  return [{name for name, on in zip(token_classes.CLASSES, row) if on} for row in table]


@pytest.mark.parametrize("pieces, expected", [
    # Byte-level-BPE style: the space is in the word's first piece; GPT-2 splits "'ll" off.
    (["I", "'ll", " go", ",", " my", " lord", "."],
     [{WI, CAP, C_FIRST}, {CONT, C_LATER}, {WI}, {PUNCT}, {WI}, {WI}, {PUNCT}]),
    # 'tis and o'er, the apostrophe a piece of its own; a newline piece; a word split in three.
    (["\n", "'", "tis", " o", "'", "er", " the", " sh", "rew", "d"],
     [{SPACE}, {PUNCT, C_FIRST}, {CONT, C_LATER}, {WI, C_FIRST}, {PUNCT, C_LATER}, {CONT, C_LATER},
      {WI}, {WI}, {CONT}, {CONT}]),
    # A trailing apostrophe is not a contraction; SentencePiece-style separate space pieces; digits.
    (["James", "'", " ", "Hat", " 12", "th", " --", " DON", "'T"],
     [{WI, CAP}, {PUNCT}, {SPACE}, {WI, CAP}, {WI}, {CONT}, {PUNCT}, {WI, CAP, C_FIRST},
      {CONT, CAP, C_LATER}]),
    # A token that only starts a multi-byte character adds "": no class; the next adds the character.
    (["caf", "", "\u00e9", " x"], [{WI}, set(), {CONT}, {WI}]),
    # Typographic apostrophe; a row that starts mid-word counts the first piece as word-initial.
    (["ll", " I", "\u2019", "m"], [{WI}, {WI, CAP, C_FIRST}, {PUNCT, C_LATER}, {CONT, C_LATER}]),
])
def test_classes_of_hand_labelled_rows(pieces, expected):
  assert labels(pieces) == expected


def test_row_classifier_uses_the_tokenizers_pieces():
  """Bytes: each token is one character, classified in the context of its row."""
  tokenizer = tokenizer_lib.ByteTokenizer()
  text = ["I'll go", "O'er it"]
  ids = np.stack([tokenizer.encode(t) for t in text])  # [2, 7]
  classify_rows = token_classes.row_classifier(lambda row: tokenizer_lib.token_pieces(tokenizer, row))
  got = classify_rows(ids)
  assert got.shape == (2, 7, len(token_classes.CLASSES))
  for row, t in zip(got, text):
    assert np.array_equal(row, token_classes.classify(list(t)))
  # "I'll go": I, ', l, l, space, g, o.
  assert labels(list("I'll go")) == [{WI, CAP, C_FIRST}, {PUNCT, C_LATER}, {CONT, C_LATER}, {CONT, C_LATER},
                                     {SPACE}, {WI}, {CONT}]
