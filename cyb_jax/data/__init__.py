"""Data for cyb_jax: synthetic tasks with difficulty labels, local text, TFDS text.

Batches are dicts of numpy arrays (see ``example.py``): ``inputs``, ``targets``,
``loss_mask`` [B, N], plus ``difficulty`` (synthetic tasks) or ``segment_ids`` (packed TFDS).
Entry point: ``make_dataset``; ``data_info`` gives vocab size, row length and label names.
"""

from cyb_jax.data.addition import AdditionConfig, AdditionTask, add_lsb_first
from cyb_jax.data.example import (DIFFICULTY, INPUTS, LOSS_MASK, NO_DIFFICULTY, SEGMENT_IDS,
                                  TARGETS)
from cyb_jax.data.pipeline import (DataConfig, DataInfo, data_info, known_sources,
                                   make_dataset, make_source)
from cyb_jax.data.pointer_chasing import PointerChasingConfig, PointerChasingTask
from cyb_jax.data.set_sum import SetSumConfig, SetSumTask
from cyb_jax.data.synthetic import SyntheticSource, SyntheticTask
from cyb_jax.data.tasks import TASKS, make_task
from cyb_jax.data.text import TextWindowSource
from cyb_jax.data.tokenizer import (KNOWN_TOKENIZERS, ByteTokenizer, HFTokenizer,
                                   SentencePieceTokenizer, SpecialTokens, Tokenizer,
                                   load_bpe_tokenizer, load_pretrained_tokenizer, make_tokenizer,
                                   special_token_rule, train_bpe_tokenizer)
