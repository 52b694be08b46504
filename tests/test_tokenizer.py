"""Tests for cyb_jax/data/tokenizer.py.

Goldens come from transformers 5.23's AutoTokenizer (and 4.57's where it differs) on the fixtures
in tests/fixtures/tokenizers/, made by tests/fixtures/make_hf_fixtures.py; what they show is
summarised in tests/fixtures/HF_FACTS.md section (f). No torch or transformers is needed here.
"""

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cyb_jax.data import tokenizer as tok_lib

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER_FIXTURES = FIXTURES / "tokenizers"
# The first 20,000 characters of tinyshakespeare, committed (how it was made: tests/test_finetune_hf.py).
SHAKESPEARE = FIXTURES / "shakespeare_20k.txt"

# Model fixture dirs carry copies of a tokenizer fixture (the generator checked that AutoTokenizer
# gives the same ids on both), so they are checked against that fixture's golden.json.
MODEL_DIRS = {"llama_llama3rope": "llama3_style", "qwen2_bf16": "qwen_style",
              "gemma3_text": "gemma_spm"}

# (directory, golden name, add_bos, eos_ids) as our rule gives them; every add_bos equals what
# 5.23 does (golden input_ids), see test_llama_class_follows_transformers_5 for the one case where
# 4.57 differs.
CASES = [
    # Post-processor adds <|begin_of_text|>; EOS list from generation_config.json first.
    ("tokenizers/llama3_style", "llama3_style", True, (286, 287)),
    # add_bos_token false in tokenizer_config, ignored: the post-processor decides.
    ("tokenizers/tokenizer_config_override", "tokenizer_config_override", True, (286,)),
    # add_bos_token true in tokenizer_config, ignored: the post-processor adds nothing.
    ("tokenizers/tokenizer_config_override_add", "tokenizer_config_override_add", False, (286,)),
    ("tokenizers/tokenizer_config_override_llama_class", "tokenizer_config_override_llama_class",
     True, (286,)),
    # No BOS token at all.
    ("tokenizers/qwen_style", "qwen_style", False, (267,)),
    # tokenizer.model only: add_bos_token true.
    ("tokenizers/gemma_spm", "gemma_spm", True, (1,)),
    # generation_config [286, 287], config.json 286, tokenizer 286.
    ("hf/llama_llama3rope", "llama3_style", True, (286, 287)),
    ("hf/qwen2_bf16", "qwen_style", False, (267,)),
    ("hf/gemma3_text", "gemma_spm", True, (1,)),
]
CASE_IDS = [case[0] for case in CASES]


def golden(name):
  with open(TOKENIZER_FIXTURES / name / "golden.json", encoding="utf-8") as handle:
    return json.load(handle)


@pytest.fixture(scope="module")
def llama3():
  return tok_lib.load_pretrained_tokenizer(TOKENIZER_FIXTURES / "llama3_style")


@pytest.fixture(scope="module")
def gemma():
  return tok_lib.load_pretrained_tokenizer(TOKENIZER_FIXTURES / "gemma_spm")


# ----------------------------------------------------------------------------------------------
# Pretrained tokenizers against AutoTokenizer goldens


@pytest.mark.parametrize("directory, name, add_bos, eos_ids", CASES, ids=CASE_IDS)
def test_matches_auto_tokenizer_5(directory, name, add_bos, eos_ids):
  gold = golden(name)
  assert gold["transformers_version"].startswith("5.")
  tokenizer = tok_lib.load_pretrained_tokenizer(FIXTURES / directory)
  expected_class = tok_lib.SentencePieceTokenizer if name == "gemma_spm" else tok_lib.HFTokenizer
  assert isinstance(tokenizer, expected_class)
  assert tokenizer.vocab_size == gold["len_tokenizer"]
  assert tokenizer.add_bos is add_bos
  assert tokenizer.bos_id == gold["bos_token_id"]
  assert tokenizer.eos_ids == eos_ids and gold["eos_token_id"] in eos_ids
  assert len(gold["cases"]) == 10
  for case in gold["cases"]:
    text = case["text"]
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == case["input_ids_no_special"], text
    np.testing.assert_array_equal(tokenizer.encode(text.encode("utf-8")), ids)
    assert tokenizer.encode_document(text).tolist() == case["input_ids"], text
    # 5.x decode; where 4.57 differs (clean_up_tokenization_spaces) see the next test.
    assert tokenizer.decode(case["input_ids"]) == case["decoded_skip_special"], text
    assert max(case["input_ids"], default=0) < tokenizer.vocab_size


@pytest.mark.parametrize("name", ["llama3_style", "tokenizer_config_override",
                                  "tokenizer_config_override_add"])
def test_decode_follows_transformers_5_not_4_cleanup(name):
  # 4.57 applies clean_up_tokenization_spaces=True from tokenizer_config ("Hello, world!");
  # 5.23 ignores it for BPE models and so do we: decode gives back exactly the text's spaces.
  gold = golden(name)
  assert not gold["transformers_4"]["same_decode_as_5"]
  tokenizer = tok_lib.load_pretrained_tokenizer(TOKENIZER_FIXTURES / name)
  by_text = {case["text"]: case for case in gold["cases"]}
  differing = [case for case in gold["transformers_4"]["cases_that_differ"]
               if case["decoded_skip_special"] != by_text[case["text"]]["decoded_skip_special"]]
  assert differing
  for case in differing:
    decoded = tokenizer.decode(case["input_ids"])
    assert decoded == by_text[case["text"]]["decoded_skip_special"] == case["text"]
    assert decoded != case["decoded_skip_special"]


def test_llama_class_follows_transformers_5():
  # tokenizer_class LlamaTokenizerFast with add_bos_token false and a post-processor that adds
  # BOS. 4.57 rebuilt the post-processor from add_bos_token (no BOS); 5.23 ignores the key and
  # adds BOS. We follow 5.23: tokenizer.json alone decides, the same rule as for the generic
  # class (tokenizer_config_override), and the model was trained with what tokenizer.json does.
  # add_bos=False reproduces 4.57 for whoever needs it.
  gold = golden("tokenizer_config_override_llama_class")
  directory = TOKENIZER_FIXTURES / "tokenizer_config_override_llama_class"
  assert not gold["transformers_4"]["same_ids_as_5"]
  ours = tok_lib.load_pretrained_tokenizer(directory)
  as_4 = tok_lib.load_pretrained_tokenizer(directory, add_bos=False)
  assert as_4.bos_id == ours.bos_id == 285
  by_text = {case["text"]: case for case in gold["cases"]}
  for case in gold["transformers_4"]["cases_that_differ"]:
    assert ours.encode_document(case["text"]).tolist() == by_text[case["text"]]["input_ids"]
    assert as_4.encode_document(case["text"]).tolist() == case["input_ids"]
    assert case["input_ids"] != by_text[case["text"]]["input_ids"]


def test_special_token_text_is_split_as_auto_tokenizer_does(gemma):
  # Raw sentencepiece spells "<eos>" out; AutoTokenizer (and we) match it as the EOS token.
  gold = golden("gemma_spm")
  case, raw = gold["cases"][-1], gold["raw_library"]["cases"][-1]
  assert case["text"].startswith("<eos>")
  assert raw["encode"] != case["input_ids_no_special"]
  assert gemma.encode(case["text"])[0] == 1


# ----------------------------------------------------------------------------------------------
# The BOS/EOS rule


def _lookup(vocab):
  return vocab.get


def test_rule_tokenizer_json_post_processor_decides():
  vocab = {"<s>": 7, "</s>": 8}
  # Post-processor adds 7: added, whatever add_bos_token says.
  rule = tok_lib.special_token_rule(source="tokenizer.json", token_to_id=_lookup(vocab),
                                    tokenizer_config={"add_bos_token": False, "bos_token": "<s>"},
                                    post_processor_bos_id=7)
  assert rule == tok_lib.SpecialTokens(True, 7, ())
  # No post-processor BOS: not added, but bos_id is still the config's bos_token.
  rule = tok_lib.special_token_rule(source="tokenizer.json", token_to_id=_lookup(vocab),
                                    tokenizer_config={"add_bos_token": True, "bos_token": "<s>"})
  assert rule == tok_lib.SpecialTokens(False, 7, ())
  assert tok_lib.special_token_rule(source="tokenizer.json", token_to_id=_lookup(vocab)) == \
      tok_lib.SpecialTokens(False, None, ())


def test_rule_sentencepiece_add_bos_token_key():
  vocab = {"<bos>": 2, "<eos>": 1}
  def rule(config, **kwargs):
    return tok_lib.special_token_rule(source="tokenizer.model", token_to_id=_lookup(vocab),
                                      tokenizer_config=config, model_bos_id=2, model_eos_id=1,
                                      **kwargs)
  assert rule({"add_bos_token": True, "bos_token": "<bos>"}).add_bos
  assert not rule({"add_bos_token": False, "bos_token": "<bos>"}).add_bos
  # Missing key: we add BOS since the model has one (transformers 5.23 would not; 4.x did).
  assert rule({"bos_token": "<bos>"}) == tok_lib.SpecialTokens(True, 2, (1,))
  assert rule({}) == tok_lib.SpecialTokens(True, 2, (1,))
  # bos_token null in the config: no BOS even though the model has a BOS piece.
  assert rule({"bos_token": None}) == tok_lib.SpecialTokens(False, None, (1,))
  assert rule({}, add_bos=False) == tok_lib.SpecialTokens(False, 2, (1,))


def test_rule_eos_order_and_forms():
  vocab = {"<eos>": 9, "<eot>": 5}
  rule = tok_lib.special_token_rule(
      source="tokenizer.json", token_to_id=_lookup(vocab),
      tokenizer_config={"eos_token": {"content": "<eos>", "special": True}},
      generation_config={"eos_token_id": [5, 4]}, model_config={"eos_token_id": 4})
  assert rule.eos_ids == (5, 4, 9)
  nested = tok_lib.special_token_rule(source="tokenizer.json", token_to_id=_lookup(vocab),
                                      model_config={"text_config": {"eos_token_id": 3}})
  assert nested.eos_ids == (3,)


def test_rule_errors():
  with pytest.raises(ValueError, match="no BOS"):
    tok_lib.special_token_rule(source="tokenizer.json", token_to_id=_lookup({}), add_bos=True)
  with pytest.raises(ValueError, match="<missing>"):
    tok_lib.special_token_rule(source="tokenizer.json", token_to_id=_lookup({}),
                               tokenizer_config={"eos_token": "<missing>"})
  with pytest.raises(ValueError, match="tokenizer.model"):
    tok_lib.special_token_rule(source="vocab.txt", token_to_id=_lookup({}))


def test_sentencepiece_without_add_bos_token_key_adds_bos(tmp_path):
  # HF_FACTS (f): here transformers 5.23 adds no BOS, 4.57 adds one; we add it (see the rule).
  shutil.copy(TOKENIZER_FIXTURES / "gemma_spm" / "tokenizer.model", tmp_path)
  config = json.loads((TOKENIZER_FIXTURES / "gemma_spm" / "tokenizer_config.json").read_text())
  del config["add_bos_token"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  tokenizer = tok_lib.load_pretrained_tokenizer(tmp_path)
  assert tokenizer.add_bos and tokenizer.bos_id == 2
  assert tokenizer.encode_document("Hello world").tolist() == \
      golden("gemma_spm")["cases"][0]["input_ids"]


def test_add_bos_override(llama3):
  directory = TOKENIZER_FIXTURES / "qwen_style"
  off = tok_lib.load_pretrained_tokenizer(TOKENIZER_FIXTURES / "llama3_style", add_bos=False)
  np.testing.assert_array_equal(off.encode_document("Hello world"), llama3.encode("Hello world"))
  on = tok_lib.load_pretrained_tokenizer(TOKENIZER_FIXTURES / "tokenizer_config_override_add",
                                         add_bos=True)
  assert on.encode_document("Hello world").tolist() == \
      golden("llama3_style")["cases"][0]["input_ids"]
  with pytest.raises(ValueError, match="no BOS"):
    tok_lib.load_pretrained_tokenizer(directory, add_bos=True)  # Qwen has no BOS token.
  gemma_off = tok_lib.make_tokenizer("hf", str(TOKENIZER_FIXTURES / "gemma_spm"), add_bos=False)
  assert not gemma_off.add_bos and gemma_off.encode_document("").size == 0


# ----------------------------------------------------------------------------------------------
# token_text


def test_token_text_byte_level(llama3):
  ids = llama3.encode("señor world")
  shown = [llama3.token_text(i) for i in ids]
  # "ñ" (C3 B1) is split over two byte-level tokens; neither is text on its own.
  assert shown == ["s", "e", "<0xC3>", "<0xB1>", "or", " w", "or", "l", "d"]
  assert llama3.decode(ids) == "señor world"  # Decoded together, the character is whole.
  assert llama3.token_text(285) == "<|begin_of_text|>"
  assert llama3.token_text(287) == "<|eot_id|>"
  with pytest.raises(ValueError, match="288"):
    llama3.token_text(288)


def test_token_text_sentencepiece(gemma):
  ids = gemma.encode("señor")
  shown = [gemma.token_text(i) for i in ids]
  assert shown == ["s", "e", "<0xC3>", "<0xB1>", "o", "r"]  # Byte-fallback pieces.
  assert gemma._processor.id_to_piece(int(ids[2])) == "<0xC3>"  # pylint: disable=protected-access
  assert gemma.token_text(2) == "<bos>" and gemma.token_text(1) == "<eos>"
  assert gemma.token_text(gemma.encode(" ")[0]) == " "  # "▁" is a space.


def test_token_text_bytes():
  tokenizer = tok_lib.ByteTokenizer()
  shown = [tokenizer.token_text(i) for i in tokenizer.encode("señor")]
  assert shown == ["s", "e", "<0xC3>", "<0xB1>", "o", "r"]
  assert tokenizer.token_text(tokenizer.bos_id) == "<bos>"


@pytest.mark.parametrize("directory", ["tokenizers/llama3_style", "tokenizers/qwen_style",
                                       "tokenizers/gemma_spm", None], ids=str)
def test_token_text_never_empty(directory):
  tokenizer = (tok_lib.ByteTokenizer() if directory is None else
               tok_lib.load_pretrained_tokenizer(FIXTURES / directory))
  shown = [tokenizer.token_text(i) for i in range(tokenizer.vocab_size)]
  assert all(isinstance(text, str) and text for text in shown)
  assert "\ufffd" not in "".join(shown)


# ----------------------------------------------------------------------------------------------
# BPE trained here


@pytest.fixture(scope="module")
def shakespeare():
  return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory, shakespeare):
  path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
  tok_lib.train_bpe_tokenizer(shakespeare, 512, str(path))
  return path


def test_bpe_round_trip_and_specials(bpe_path, shakespeare):
  tokenizer = tok_lib.make_tokenizer("bpe", str(bpe_path))
  assert tokenizer.vocab_size == 512
  assert (tokenizer.bos_id, tokenizer.eos_ids, tokenizer.add_bos) == (0, (1,), False)
  assert tokenizer.token_text(0) == "<|bos|>" and tokenizer.token_text(1) == "<|eos|>"
  for text in ["señor über 日本語", "  two  spaces\n\ttab\r\n", "\x00\x7f emoji 🙂 end ", ""]:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert ((ids >= 2) & (ids < 512)).all()  # No unknowns, no specials from plain text.
  excerpt = shakespeare[-20_000:]
  ids = tokenizer.encode(excerpt)
  assert ids.max() < 512 and tokenizer.decode(ids) == excerpt
  assert len(ids) < 0.6 * len(excerpt.encode("utf-8"))  # Merges compress Shakespeare.
  assert tokenizer.encode_document("to be").tolist() == tokenizer.encode("to be").tolist()
  assert tok_lib.make_tokenizer("bpe", str(bpe_path), add_bos=True).encode_document("to")[0] == 0


def test_bpe_is_deterministic_and_reloads(bpe_path, shakespeare, tmp_path):
  again = tmp_path / "again.json"
  trained = tok_lib.train_bpe_tokenizer(shakespeare, 512, str(again))
  assert filecmp.cmp(bpe_path, again, shallow=False)
  loaded = tok_lib.make_tokenizer("bpe", str(bpe_path))
  text = shakespeare[:5000] + " señor"
  np.testing.assert_array_equal(trained.encode(text), loaded.encode(text))


# ----------------------------------------------------------------------------------------------
# make_tokenizer and errors


def test_make_tokenizer_names(gemma):
  assert isinstance(tok_lib.make_tokenizer(), tok_lib.ByteTokenizer)
  assert not tok_lib.make_tokenizer("byte", "").add_bos  # Positional, as pipeline.py calls it.
  assert tok_lib.make_tokenizer("byte", "", add_bos=True).add_bos
  directory = TOKENIZER_FIXTURES / "llama3_style"
  from_dir = tok_lib.make_tokenizer("hf", str(directory))
  from_file = tok_lib.make_tokenizer("hf", str(directory / "tokenizer.json"))
  assert from_dir.eos_ids == (286, 287) and from_file.eos_ids == ()  # A file reads no configs.
  assert from_file.add_bos and from_file.bos_id == 285
  # A bare .model: its own BOS/EOS pieces, no config-declared tokens, and no BOS unless asked (our own
  # text runs with a SentencePiece model always read windows without one).
  bare = tok_lib.make_tokenizer("sentencepiece", str(directory.parent / "gemma_spm" /
                                                     "tokenizer.model"))
  assert (bare.add_bos, bare.bos_id, bare.eos_ids) == (False, 2, (1,))
  assert tok_lib.make_tokenizer("sentencepiece", str(directory.parent / "gemma_spm" / "tokenizer.model"),
                                add_bos=True).add_bos
  np.testing.assert_array_equal(bare.encode("Hello world"), gemma.encode("Hello world"))
  for tokenizer in [from_dir, from_file, bare, gemma, tok_lib.ByteTokenizer()]:
    assert isinstance(tokenizer, tok_lib.Tokenizer) and repr(tokenizer)


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json.*tokenizer.model") as error:
    tok_lib.load_pretrained_tokenizer(tmp_path)
  assert str(tmp_path) in str(error.value)
  with pytest.raises(ValueError, match="'byte', 'sentencepiece', 'hf', 'bpe'"):
    tok_lib.make_tokenizer("wordpiece", "x")
  with pytest.raises(ValueError, match="needs a path"):
    tok_lib.make_tokenizer("hf", "")
  with pytest.raises(FileNotFoundError, match="nowhere.json"):
    tok_lib.make_tokenizer("bpe", str(tmp_path / "nowhere.json"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    tok_lib.make_tokenizer("hf", str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="m.model"):
    tok_lib.make_tokenizer("sentencepiece", str(tmp_path / "m.model"))
  with pytest.raises(ValueError, match="258"):
    tok_lib.train_bpe_tokenizer("some text", 257, str(tmp_path / "small.json"))
  assert not (tmp_path / "small.json").exists()
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    tok_lib.HFTokenizer(tmp_path)


# ----------------------------------------------------------------------------------------------
# Text that spells special tokens; prompts that already hold BOS; cuts at character boundaries


def test_plain_encoding_spells_special_tokens_out(gemma, llama3):
  # SentencePiece: "<eos>" spelt out is exactly what the raw library gives (golden from sentencepiece).
  gold = golden("gemma_spm")
  case, raw = gold["cases"][-1], gold["raw_library"]["cases"][-1]
  assert gemma.encode_plain(case["text"]).tolist() == raw["encode"]
  assert gemma.encode(case["text"])[0] == 1  # encode still parses it, as AutoTokenizer does
  # tokenizer.json: the special token's text becomes ordinary pieces that decode back to it.
  text = "before <|begin_of_text|> after <|eot_id|>"
  plain = llama3.encode_plain(text)
  assert not set(plain.tolist()) & {285, 286, 287}
  assert llama3.decode(plain) == text
  assert set(llama3.encode(text).tolist()) >= {285, 287}
  assert llama3.encode_plain("no specials here").tolist() == llama3.encode("no specials here").tolist()


def test_find_special_text(llama3, gemma):
  assert tok_lib.find_special_text(llama3, "a <|eot_id|> b <|begin_of_text|>") == (2, "<|eot_id|>")
  assert tok_lib.find_special_text(llama3, "a < b and [c] <|not a token|>") is None
  assert tok_lib.find_special_text(gemma, "x<eos>") == (1, "<eos>")
  assert tok_lib.find_special_text(tok_lib.ByteTokenizer(), "<|endoftext|>") is None


def test_text_starting_with_bos_text_gets_no_second_bos(llama3):
  ids = llama3.encode_document("<|begin_of_text|>Hello")
  assert ids.tolist() == [285] + llama3.encode("Hello").tolist()
  assert llama3.encode_document("Hello").tolist() == [285] + llama3.encode("Hello").tolist()
  # Plain text never holds the BOS id, so it does get one.
  assert llama3.encode_document("<|begin_of_text|>Hello", plain=True)[0] == 285
  assert (llama3.encode_document("<|begin_of_text|>Hello", plain=True) == 285).sum() == 1


def test_trim_to_characters_on_bytes():
  byte_level = tok_lib.ByteTokenizer()
  raw = "über 日本語".encode()  # ü: 2 bytes (0-1); 日 本 語: 3 bytes each, at 6, 9, 12
  assert len(raw) == 15
  # Cut after the first byte of 本 (10 bytes) and from the second byte of ü: trimmed to " 日" ... "ber 日".
  assert tok_lib.trim_to_characters(byte_level, list(raw[1:10])) == (1, 8)
  assert bytes(raw[1:10][1:8]).decode() == "ber 日"
  assert tok_lib.trim_to_characters(byte_level, list(raw[:11])) == (0, 9)  # 本 cut after 2 of 3 bytes
  assert tok_lib.trim_to_characters(byte_level, list(raw)) == (0, 15)      # nothing to cut
  assert tok_lib.trim_to_characters(byte_level, list(raw[6:7])) == (0, 1)  # never all of it
