"""The data-efficiency experiment (DESIGN.md section 7): does CYB reach a baseline's quality with less data?

  python experiments/data_efficiency.py --setting=synthetic        # from scratch on the synthetic task
  python experiments/data_efficiency.py --setting=shakespeare      # pretrain no-pause, then fine-tune
  python experiments/data_efficiency.py --setting=shakespeare_bpe  # the same on BPE word pieces
  python experiments/data_efficiency.py --setting=shakespeare_k2 --runs=cyb_va@beta.03,warm.5  # bytes, K = 2
  python experiments/data_efficiency.py --setting=shakespeare_2l --runs=cyb_va@beta.03,fb0,cyb_va@beta.03
                                                                    # bytes, 2 layers, first-layer feedback
  python experiments/data_efficiency.py --setting=synthetic --quick  # smoke run, a few minutes
  python experiments/data_efficiency.py --setting=sotu_smollm2 --precondition   # real SmolLM2-135M on SOTU
  python experiments/data_efficiency.py --setting=sotu_smollm2                  # speeches: first the pause
                                                                    # option, then the grid (about 2 hours)
  python experiments/data_efficiency.py --setting=synthetic --seed=1 --runs=cyb_ap,cyb_va@beta.03,cyb_dp
                                                                    # another seed, chosen CYB settings
  python experiments/data_efficiency.py --setting=synthetic --across_seeds=0,1,2 --runs=cyb_ap,cyb_va@beta.03,cyb_dp
                                                                    # each seed's multiples and the median
  python experiments/data_efficiency.py --setting=synthetic --seed=1 --runs=cyb_dp@warm.5 --add_runs
                                                                    # one more run beside a finished seed

Trains ce, pause_ce, cyb_ap, cyb_va and cyb_dp with the same model, data order and learning-rate
schedule, evaluates each on the whole eval split at the same training-token checkpoints (nll_policy under
the objective's own policy: ce never pauses, pause_ce always takes K pauses, CYB uses the threshold
policy), and writes results/data_efficiency_<setting>.{json,png,md}: the curves, the final numbers, and
for every baseline and CYB objective the multiple (tokens the baseline needs to reach the CYB model's final
nll_policy) / (tokens the CYB model used).

The baselines train BASELINE_FACTOR times longer than the CYB runs (ce 3x, pause_ce 2x), so a multiple up
to the published targets (3 and 2) is measured, not only bounded. All runs use a constant learning rate
after warm-up, so a baseline's first N tokens are exactly the run it would have made with N tokens.
Each CYB objective is run at a few hyperparameter settings (GRID); the table reports all of them and the
headline uses the one with the best final nll_policy (chosen on the same eval split: a mild optimism).

Runs live in runs/data_efficiency/<setting>/<run>; re-running resumes or reuses finished runs. Each
finished run's record (eval curve, hyperparameters, steps, seconds) is also written to
results/data_efficiency_<setting>/<run>.json, and a run whose record covers its steps is read from there
instead of trained: a grid spread over sessions that do not keep runs/ trains only what is missing.

A setting with a "precondition" (sotu_smollm2) first needs --precondition: ce and pause_ce variants (pause
feedback on/off, feedback layer) at the CYB budget, tabled in results/data_efficiency_<setting>_precondition.md;
the variant with the best nll is the pause_ce baseline of the grid, and its pause options are the CYB runs'.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs import default as default_config  # noqa: E402
from configs import finetune_hf as finetune_hf_config  # noqa: E402
from cyb_jax import configuration  # noqa: E402
from cyb_jax.evaluation import efficiency  # noqa: E402
from cyb_jax.evaluation import evaluate  # noqa: E402
from cyb_jax.storage import metrics_writer  # noqa: E402
from cyb_jax.training import trainer  # noqa: E402

BASELINES = ("ce", "pause_ce")
CYB = ("cyb_ap", "cyb_va", "cyb_dp")
OBJECTIVES = BASELINES + CYB
POLICY = {"ce": "never", "pause_ce": "always", "cyb_ap": "threshold", "cyb_va": "threshold",
          "cyb_dp": "threshold"}


def apply_overrides(config, overrides: dict) -> None:
  """Sets dotted keys, e.g. {"model.width": 64}."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value


SHARED = os.path.join(os.path.dirname(ROOT), "shared")  # the developers' models and corpora (../shared)
# tinyshakespeare fine-tuning (the published protocol): the model and data every text setting shares, and its
# protocol. The no-pause pretraining is not part of the comparison (cosine schedule, a finished model);
# fine-tuning uses a lower learning rate so it does not first undo the pretraining.
TEXT_OVERRIDES = {"data.name": "text_file",
                  "data.text_path": os.path.join(SHARED, "data", "tinyshakespeare.txt"),
                  "data.seq_len": 128, "data.task": {}, "model.width": 128, "model.num_layers": 1,
                  "model.num_heads": 4, "model.mlp_hidden": 512, "train.batch_size": 16,
                  "train.log_every": 100, "train.eval_batches": 0}
TEXT_PROTOCOL = {"pretrain_overrides": {"optim.schedule": "cosine"},
                 "finetune_overrides": {"optim.learning_rate": 1e-3, "optim.warmup_steps": 50},
                 "grid": False,  # one setting per CYB objective (the first of GRID): an hour's budget
                 "quick_pretrain_steps": 30, "quick_steps": 30, "quick_eval_every": 10}

# Each setting: shared overrides, steps, evaluation interval; quick variants shrink them.
SETTINGS = {
    # The default config's task (1-layer pointer chasing, K = 1), trained twice as long as the main job.
    "synthetic": {
        "overrides": {"train.batch_size": 32, "data.eval_examples": 512, "train.log_every": 200},
        "steps": 6000, "eval_every": 500, "quick_steps": 40, "quick_eval_every": 20,
    },
    # The same task with up to 3 hops and K = 2: the third hop needs the second pause. A fixed-pause model
    # gets its only signal at the last step; CYB's anytime term also trains the intermediate step.
    "synthetic_k2": {
        "overrides": {"train.batch_size": 32, "data.eval_examples": 512, "train.log_every": 200,
                      "data.task.max_hops": 3, "data.task.hop_weights": (1, 1, 2, 2), "num_pauses": 2},
        "steps": 6000, "eval_every": 500, "quick_steps": 40, "quick_eval_every": 20,
    },
    # Byte-level text. One layer: experiments/text_pause_search.py found that a forced pause gains 0.022
    # nats/byte over ce there and only 0.001-0.005 with two layers.
    "shakespeare": {"overrides": TEXT_OVERRIDES, **TEXT_PROTOCOL,
                    "pretrain_steps": 1500, "steps": 1800, "eval_every": 300},
    # The same text as word pieces: a byte-level BPE of 2048 ids trained on the training split only (each
    # run trains the same file into its work directory), otherwise the byte setting's model and protocol
    # with fewer steps (a BPE token carries about 3 bytes, so a step sees about 3x the text; and a step
    # costs about 3x a byte step here, mostly the 2048-way output layer). tinyshakespeare is about 300k BPE
    # tokens of training text, 150 steps of 16 x 128 per epoch: a first try with 1200 pretraining and 600
    # fine-tuning steps overfitted (ce's eval nll rose from 4.22 to 4.63 while fine-tuning), so pretraining
    # stops after 400 steps and the CYB budget is 200.
    "shakespeare_bpe": {"overrides": {**TEXT_OVERRIDES, "data.tokenizer": "bpe", "data.bpe_vocab_size": 2048},
                        **TEXT_PROTOCOL, "pretrain_steps": 400, "steps": 200, "eval_every": 50},
    # The byte setting with two layers, for feedback from the first layer's output (model.pause_feedback_layer
    # = 0) against the last (DESIGN.md section 8): step 0's last layer can stay an answer while the pause
    # reads an intermediate state. A forced pause pays less here than with one layer (text_pause_search).
    # Half the byte setting's budget (a 2-layer step costs about twice a 1-layer one on this CPU).
    "shakespeare_2l": {"overrides": {**TEXT_OVERRIDES, "model.num_layers": 2}, **TEXT_PROTOCOL,
                       "pretrain_steps": 1500, "steps": 900, "eval_every": 150},
    # The byte setting with K = 2 (DESIGN.md section 8's list of levers): with one layer and feedback, a
    # second pause is one more layer of depth for the tokens that need it. Pretraining and ce are the byte
    # setting's runs exactly (no pauses); pause_ce, the warm starts and CYB take up to two pauses.
    "shakespeare_k2": {"overrides": {**TEXT_OVERRIDES, "num_pauses": 2}, **TEXT_PROTOCOL,
                       "pretrain_steps": 1500, "steps": 1800, "eval_every": 300},
    # The published setting at CPU scale (issue 25): the real SmolLM2-135M-Instruct (GGUF, 30 layers) fine-tuned
    # on State of the Union speeches (210 train, 23 held-out eval speeches, split by document) in windows of
    # 256 word pieces, batch 4. One step costs about 11.5 s at K = 0 and 19 s at K = 1 on this project's
    # 2-core CPU (float32; bfloat16 costs the same without hardware support). The budget N = 32 steps (32,768
    # tokens) is the largest whose whole grid (ce to 3N, pause_ce to 2N, three CYB runs, two more pause_ce
    # variants for the precondition: about 170 N CPU-seconds with evals) fits one 3-hour session. Evals
    # read the first 6 eval batches (6,144 tokens of held-out speeches), the same for every run. The
    # learning rate is higher than finetune_hf's (1e-4, 4 warm-up steps, then constant) so that 32 steps move
    # the new pause and <dk> parameters at all.
    "sotu_smollm2": {
        "base_config": finetune_hf_config,
        "overrides": {"init_from_hf": os.path.join(SHARED, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                      "data.text_path": os.path.join(SHARED, "data", "sotu.jsonl"), "data.seq_len": 256,
                      "train.batch_size": 4, "model.dtype": "float32", "optim.learning_rate": 1e-4,
                      "optim.warmup_steps": 4, "train.log_every": 4, "train.keep_checkpoints": 1},
        "objective_overrides": {"ce": {"model.max_pauses": 0}},
        "eval_batches": 6, "steps": 32, "eval_every": 8, "quick_steps": 2, "quick_eval_every": 1,
        # The CYB runs of the grid: VA at the setting the toy grids chose (beta .03), DP and AP at DESIGN.md
        # section 5's starting points.
        "runs": ("cyb_va@beta.03", "cyb_dp", "cyb_ap"),
        # pause_ce variants of the precondition table (--precondition); the best one's options go to the grid.
        "precondition": {"pause_ce": {}, "pause_ce@nofeedback": {"model.pause_feedback": False},
                         "pause_ce@feedback14": {"model.pause_feedback_layer": 14}},
    },
}
# How many times the CYB runs' steps each baseline trains (see the module docstring).
BASELINE_FACTOR = {"ce": 3, "pause_ce": 2}
# Objective hyperparameters shared by both settings. CYB objectives: a grid of settings, the first being
# DESIGN.md section 5's starting point; each becomes one run named "<objective>" or "<objective>@<tag>".
OBJECTIVE_OVERRIDES = {
    "ce": {"num_pauses": 0},
    "pause_ce": {},
}
# A GRID entry's key that is not a config key: the fraction of the CYB budget first trained as pause_ce,
# from whose parameters (pause ones included, `config.init_keep_pauses`) the CYB objective goes on.
# DESIGN.md section 8: CYB then only has to learn when to stop, not how to use the pause step.
WARM_START = "warm_start"
# Another such key: True makes a warm start's CYB part read the training data after its pause_ce part's
# (`train.skip_batches`), so the run sees as many distinct examples as the baselines; without it (the
# entries measured first) the CYB part re-reads the pause_ce part's data from the beginning.
WARM_CONTINUES = "warm_continues_data"
GRID = {
    "cyb_ap": {"": {"objective.gamma": 0.9, "objective.omega": 0.1},
               "gamma.97": {"objective.gamma": 0.97, "objective.omega": 0.1},
               "warm.5": {"objective.gamma": 0.9, "objective.omega": 0.1, "model.dk_init_prob": 0.9,
                          WARM_START: 0.5},
               # A cheaper pause and no forced early answers: a token pauses when its pause step's answer
               # is 1% likelier, where gamma 0.9 asks for 11%. Then also without the anytime term (the AP
               # counterpart of VA's anytime weight 0).
               "gamma.99,omega0,warm.5": {"objective.gamma": 0.99, "objective.omega": 0.0,
                                          "model.dk_init_prob": 0.9, WARM_START: 0.5},
               "gamma.99,omega0,any0,warm.5": {"objective.gamma": 0.99, "objective.omega": 0.0,
                                               "objective.anytime_weight": 0.0, "model.dk_init_prob": 0.9,
                                               WARM_START: 0.5}},
    "cyb_va": {"": {"objective.prior_p": 0.7, "objective.beta": 0.1},
               "beta.03": {"objective.prior_p": 0.5, "objective.beta": 0.03},
               "beta.03,any.3": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                 "objective.anytime_weight": 0.3},
               "beta.03,any0": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                "objective.anytime_weight": 0.0},
               "beta.03,warm.5": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                  "model.dk_init_prob": 0.9, WARM_START: 0.5},
               # A quarter (three quarters) as pause_ce: less of a step 0 to restore and more steps to
               # restore it in (a better-trained pause step).
               "beta.03,warm.25": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                   "model.dk_init_prob": 0.9, WARM_START: 0.25},
               "beta.03,warm.75": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                   "model.dk_init_prob": 0.9, WARM_START: 0.75},
               # Feedback from the first layer's output (of two; setting shakespeare_2l): the pause reads an
               # intermediate state, so step 0's last layer need not serve as one.
               "beta.03,fb0": {"objective.prior_p": 0.5, "objective.beta": 0.03, "model.pause_feedback_layer": 0},
               # The warm start with a weaker anytime term: step 0 need not become a good answer again
               # as fast, so more of the pause_ce model's intermediate step 0 may survive.
               "beta.03,warm.5,any.3": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                        "objective.anytime_weight": 0.3, "model.dk_init_prob": 0.9,
                                        WARM_START: 0.5},
               "beta.03,warm.5,any0": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                       "objective.anytime_weight": 0.0, "model.dk_init_prob": 0.9,
                                       WARM_START: 0.5},
               # The warm starts above with the CYB part reading fresh data (WARM_CONTINUES).
               "beta.03,warm.5,cont": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                       "model.dk_init_prob": 0.9, WARM_START: 0.5, WARM_CONTINUES: True},
               "beta.03,warm.5,any0,cont": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                            "objective.anytime_weight": 0.0, "model.dk_init_prob": 0.9,
                                            WARM_START: 0.5, WARM_CONTINUES: True},
               # The same with the stream option (pauses are ordinary tokens, no feedback); its pause_ce
               # half streams too. On 1-layer bytes a forced stream pause pays half of what feedback does.
               "beta.03,warm.5,any0,stream": {"objective.prior_p": 0.5, "objective.beta": 0.03,
                                              "objective.anytime_weight": 0.0, "model.dk_init_prob": 0.9,
                                              "model.pause_context": "stream", "model.pause_feedback": False,
                                              WARM_START: 0.5}},
    # A quarter of the loss tokens are 2-hop answers: a budget of 0.25 pauses per token can cover them.
    "cyb_dp": {"": {"objective.cost": 0.0, "objective.budget": 0.25, "objective.dual_lr": 0.05},
               "budget.5": {"objective.cost": 0.0, "objective.budget": 0.5, "objective.dual_lr": 0.05},
               "any.3": {"objective.cost": 0.0, "objective.budget": 0.25, "objective.dual_lr": 0.05,
                         "objective.anytime_weight": 0.3},
               "any0": {"objective.cost": 0.0, "objective.budget": 0.25, "objective.dual_lr": 0.05,
                        "objective.anytime_weight": 0.0},
               # Half the budget as pause_ce; <dk> restarts at 0.9, so CYB starts out pausing nearly
               # everywhere (the pause_ce model's step 0 is an intermediate state, not an answer).
               "warm.5": {"objective.cost": 0.0, "objective.budget": 0.25, "objective.dual_lr": 0.05,
                          "model.dk_init_prob": 0.9, WARM_START: 0.5},
               "warm.5,cont": {"objective.cost": 0.0, "objective.budget": 0.25, "objective.dual_lr": 0.05,
                               "model.dk_init_prob": 0.9, WARM_START: 0.5, WARM_CONTINUES: True}},
}
COMMON = {"optim.schedule": "constant"}
# Grid entries trained only when --runs names them (levers tried on one setting, not part of a setting's
# default grid): the warm-start fractions and anytime weights, CYB-AP warm and with a cheaper pause,
# first-layer feedback, the stream option, warm starts reading fresh data.
ON_REQUEST = frozenset({"cyb_va@beta.03,warm.25", "cyb_va@beta.03,warm.75", "cyb_va@beta.03,warm.5,any.3",
                        "cyb_va@beta.03,warm.5,any0", "cyb_ap@warm.5", "cyb_va@beta.03,fb0",
                        "cyb_ap@gamma.99,omega0,warm.5", "cyb_ap@gamma.99,omega0,any0,warm.5",
                        "cyb_va@beta.03,warm.5,cont", "cyb_va@beta.03,warm.5,any0,cont", "cyb_dp@warm.5,cont",
                        "cyb_va@beta.03,warm.5,any0,stream"})


def parse_runs(text: str) -> tuple[str, ...]:
  """`--runs` into run names; a name's tag may hold commas ("cyb_va@beta.03,any.3,cyb_dp" is two runs:
  a piece that does not start with an objective's name continues the previous run's tag)."""
  runs: list[str] = []
  for piece in filter(None, text.split(",")):
    if runs and piece.split("@")[0] not in OBJECTIVES:
      runs[-1] += "," + piece
    else:
      runs.append(piece)
  return tuple(runs)


def warm_start_run(overrides: dict, warm_steps: int) -> tuple[str, dict]:
  """The pause_ce run a warm-started grid entry goes on from: (its directory name, its overrides).

  It takes the entry's model options that decide what the pause steps compute (trainer.PAUSE_ROLLOUT_FIELDS,
  e.g. model.pause_context), so the CYB part keeps the pause parameters of the same rollout; entries that
  agree on them share it. model.dk_init_prob is left out: the CYB part re-initialises <dk> anyway.
  Raises ValueError for any other model option (the pause_ce part would have to be told about it).
  """
  rollout = {f"model.{field}" for field in trainer.PAUSE_ROLLOUT_FIELDS}
  other = sorted(k for k in overrides if k.startswith("model.") and k not in rollout | {"model.dk_init_prob"})
  if other:
    raise ValueError(f"a warm-started grid entry may set only {sorted(rollout)} and model.dk_init_prob "
                     f"among model options, not {other}")
  model = {k: v for k, v in sorted(overrides.items()) if k in rollout}
  name = f"pause_ce_first{warm_steps}" + "".join(f",{k[len('model.'):]}={v}" for k, v in model.items())
  return name, {**OBJECTIVE_OVERRIDES["pause_ce"], **model}


def run_name(objective: str, tag: str = "") -> str:
  return objective + (f"@{tag}" if tag else "")


def all_runs(grid: bool = True, on_request: bool = False) -> list[tuple[str, str, dict]]:
  """(run name, objective, overrides) for every run of a setting, baselines first.

  grid: every GRID entry of each objective (else only its first); on_request: ON_REQUEST entries too.
  """
  runs = [(o, o, OBJECTIVE_OVERRIDES[o]) for o in BASELINES]
  for objective in CYB:
    settings = list(GRID[objective].items())[:None if grid else 1]
    runs += [(run_name(objective, tag), objective, overrides) for tag, overrides in settings
             if on_request or run_name(objective, tag) not in ON_REQUEST]
  return runs


def make_config(setting: dict, objective: str, steps: int, eval_every: int, quick: bool,
                overrides: dict | None = None):
  config = setting.get("base_config", default_config).get_config()
  apply_overrides(config, setting["overrides"])
  eval_batches = setting.get("eval_batches", 0)  # 0 = the whole eval split
  apply_overrides(config, {"train.num_steps": steps, "train.eval_every": eval_every,
                  "train.checkpoint_every": eval_every, "train.eval_batches": eval_batches,
                  "train.final_eval_batches": eval_batches,
                  "objective.name": objective, "eval.policy": POLICY[objective], **COMMON})
  if POLICY[objective] == "threshold":  # the quality-versus-pauses curve, for the compute-matched table
    apply_overrides(config, {"eval.tau_sweep": evaluate.DEFAULT_TAU_SWEEP})
  if quick:
    apply_overrides(config, {"data.eval_examples": 64, "train.log_every": 10})
  apply_overrides(config, OBJECTIVE_OVERRIDES.get(objective, {}) if overrides is None else overrides)
  return config


# The eval-record fields kept per checkpoint in the results JSON (enough to re-summarize without training).
KEPT = ("step", "nll_policy", "accuracy", "mean_pauses", "nll_at_step", "accuracy_at_step",
        "mean_pauses_by_difficulty", "accuracy_by_difficulty", "tau_sweep")


def eval_records(workdir: str, tokens_per_step: int, step_offset: int = 0) -> list[dict]:
  """A run's eval records from its metrics.jsonl, one per eval step, with a "tokens" field added.

  step_offset: steps trained before this run (a warm start's pause_ce part), added to each step.
  """
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if record["kind"] == "eval":
        by_step[record["step"]] = {k: record[k] for k in KEPT if k in record}
  return [{**by_step[s], "step": s + step_offset, "tokens": (s + step_offset) * tokens_per_step}
          for s in sorted(by_step)]


def _suffix(quick: bool, seed: int) -> str:
  return (f"_seed{seed}" if seed else "") + ("_quick" if quick else "")


def train_seconds(workdir: str) -> float:
  """Seconds the run spent in its training loop, from the steps/s of its logged windows.

  Read from the run's own log so a reused or resumed run reports the time it took when it trained (on a
  shared machine these include whatever else was running then).
  """
  seconds, previous = 0.0, 0
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if record["kind"] == "train":
        seconds += max(record["step"] - previous, 0) / record["steps_per_s"]
        previous = record["step"]
  return seconds


def record_path(out_dir: str, name: str, quick: bool, seed: int, run: str) -> str:
  """Where one finished run's record lives: results/data_efficiency_<setting>[_seed<s>]/<run>.json."""
  return os.path.join(out_dir, f"data_efficiency_{name}" + _suffix(quick, seed), run + ".json")


def load_record(path: str, steps: int) -> dict | None:
  """The run record at `path` if it covers at least `steps` training steps, else None."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  return record if record["steps"] >= steps else None


def write_record(path: str, record: dict) -> None:
  """Writes `record` as JSON to `path` (its folder made if missing) through a temporary file, so a crash
  never leaves half a record."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(metrics_writer.to_json_types(record), f, indent=1)
  os.replace(path + ".tmp", path)


class _Runner:
  """Trains one setting's runs, each only if its record (`record_path`) is missing or too short.

  A run's record holds its eval curve, hyperparameters, steps and training seconds; it is written as soon
  as the run finishes, so a grid spread over sessions that do not keep runs/ trains only what is missing.
  A baseline whose record is shorter than needed is trained on (resumed from runs/ when its work directory
  is still there; else from the start: the data order and constant learning rate make that the same run).
  """

  def __init__(self, name: str, quick: bool, out_dir: str, seed: int):
    self.name, self.quick, self.out_dir, self.seed = name, quick, out_dir, seed
    self.setting = SETTINGS[name]
    self.steps = self.setting["quick_steps" if quick else "steps"]
    self.eval_every = self.setting["quick_eval_every" if quick else "eval_every"]
    self.run_root = os.path.join(ROOT, "runs", "data_efficiency", name + _suffix(quick, seed))
    self.init_from = ""

  def pretrain(self) -> float:
    """The no-pause pretraining of settings that have one (its training seconds), else 0."""
    setting = self.setting
    if "pretrain_steps" not in setting:
      return 0.0
    pretrain_steps = setting["quick_pretrain_steps" if self.quick else "pretrain_steps"]
    config = make_config(setting, "ce", pretrain_steps, pretrain_steps, self.quick)
    apply_overrides(config, {"seed": self.seed, **setting.get("pretrain_overrides", {})})
    config.model.max_pauses = 0
    self.init_from = os.path.join(self.run_root, "pretrain")
    trainer.train(config, self.init_from)
    return train_seconds(self.init_from)

  def _finetune_from_pretrained(self, config, objective: str) -> None:
    if self.init_from:
      apply_overrides(config, self.setting.get("finetune_overrides", {}))
      config.init_from = self.init_from
      if objective == "ce":
        config.model.max_pauses = 0  # the no-pause baseline keeps training the pretrained LM as it is

  def run(self, run: str, objective: str, overrides: dict, steps: int) -> dict:
    """Run `run` (its record, trained first if missing): {"objective", "hparams", "steps", "records",
    "seconds"}. A warm start spends its first part on pause_ce (see WARM_START), counted in `steps`."""
    path = record_path(self.out_dir, self.name, self.quick, self.seed, run)
    record = load_record(path, steps)
    if record is not None:
      logging.getLogger("cyb_jax").info("%s: recorded in %s (%d steps), not trained", run, path, record["steps"])
      return record
    if self.setting.get("pretrain_steps") and not self.init_from:
      raise RuntimeError("pretrain() must come before the fine-tuning runs")
    setting, quick = self.setting, self.quick
    warm_steps = int(round(overrides.get(WARM_START, 0.0) * self.steps))
    objective_overrides = {**OBJECTIVE_OVERRIDES.get(objective, {}),
                           **setting.get("objective_overrides", {}).get(objective, {})}
    config = make_config(setting, objective, steps - warm_steps, self.eval_every, quick,
                         {**objective_overrides,
                          **{k: v for k, v in overrides.items() if k not in (WARM_START, WARM_CONTINUES)}})
    if warm_steps and overrides.get(WARM_CONTINUES):
      config.train.skip_batches = warm_steps
    config.seed = self.seed
    self._finetune_from_pretrained(config, objective)
    seconds = 0.0
    if warm_steps:
      warm_name, warm_overrides = warm_start_run(overrides, warm_steps)
      warm_dir = os.path.join(self.run_root, warm_name)
      warm = make_config(setting, "pause_ce", warm_steps, self.eval_every, quick, warm_overrides)
      warm.seed = self.seed
      self._finetune_from_pretrained(warm, "pause_ce")
      trainer.train(warm, warm_dir)
      seconds = train_seconds(warm_dir)
      config.init_from, config.init_keep_pauses = warm_dir, True
    workdir = os.path.join(self.run_root, run)
    trainer.train(config, workdir)
    seq_len = configuration.settings_from_config(config, device_count=1, workdir=workdir,
                                                 write_files=False).data_info.seq_len
    record = {"setting": self.name, "seed": self.seed, "run": run, "objective": objective, "hparams": overrides,
              "steps": steps, "seconds": seconds + train_seconds(workdir),
              "records": eval_records(workdir, config.train.batch_size * seq_len, warm_steps)}
    write_record(path, record)
    return record


def precondition_path(out_dir: str, name: str, quick: bool, seed: int) -> str:
  return os.path.join(out_dir, f"data_efficiency_{name}_precondition" + _suffix(quick, seed) + ".json")


def chosen_pause_option(name: str, quick: bool, out_dir: str, seed: int) -> tuple[str, dict]:
  """(the pause_ce run the grid uses, its model overrides, which the CYB runs share).

  Settings without a "precondition" use plain pause_ce. Raises SystemExit when the setting has one and
  its results JSON (written by --precondition) is missing.
  """
  options = SETTINGS[name].get("precondition")
  if not options:
    return "pause_ce", {}
  path = precondition_path(out_dir, name, quick, seed)
  if not os.path.exists(path):
    raise SystemExit(f"setting {name!r} picks its pause option from its precondition table: {path} does not "
                     "exist; run with --precondition first")
  with open(path, encoding="utf-8") as f:
    chosen = json.load(f)["chosen"]
  return chosen, options[chosen]


def run_precondition(name: str, quick: bool, out_dir: str, seed: int = 0) -> dict:
  """DESIGN.md section 8's precondition: does a forced pause pay on this model and data at all?

  Trains ce and every pause_ce variant of the setting's "precondition" (pause options: feedback on/off,
  feedback layer) for the CYB budget, on the same data, and tables their eval nll at the budget: pause_ce
  forced to stop after 0..K pauses against ce. The variant with the lowest nll after K pauses is the one
  the grid uses (`chosen_pause_option`). Writes data_efficiency_<setting>_precondition[...].{json,md}.
  """
  runner = _Runner(name, quick, out_dir, seed)
  options = SETTINGS[name].get("precondition")
  if not options:
    raise SystemExit(f"setting {name!r} has no precondition variants")
  timings = {"pretrain": runner.pretrain()} if "pretrain_steps" in runner.setting else {}
  records = {"ce": runner.run("ce", "ce", {}, runner.steps)}
  for run, overrides in options.items():
    records[run] = runner.run(run, "pause_ce", overrides, runner.steps)
  at = {run: _at_step(r["records"], runner.steps) for run, r in records.items()}
  ce_nll = at["ce"]["nll_policy"]
  rows = {run: {"hparams": records[run]["hparams"], "nll_at_step": at[run]["nll_at_step"],
                "nll_policy": at[run]["nll_policy"], "accuracy": at[run]["accuracy"],
                "gain_over_ce": ce_nll - at[run]["nll_policy"], "seconds": records[run]["seconds"],
                "curve": {"tokens": [r["tokens"] for r in records[run]["records"]],
                          "nll_policy": [r["nll_policy"] for r in records[run]["records"]]}}
          for run in records}
  chosen = min(options, key=lambda run: at[run]["nll_policy"])
  result = {"setting": name, "seed": seed, "quick": quick, "steps": runner.steps,
            "tokens": at["ce"]["tokens"], "ce_nll": ce_nll, "rows": rows, "chosen": chosen,
            "pause_pays": rows[chosen]["gain_over_ce"] > 0, "seconds": timings}
  path = precondition_path(out_dir, name, quick, seed)
  write_record(path, result)
  lines = [f"# Precondition: {name}" + (f" (seed {seed})" if seed else ""), "",
           f"Does a forced pause pay? Every run trained {runner.steps} steps ({at['ce']['tokens']:,} tokens) on "
           "the same data; eval nll (nats/token) at that point. pause_ce always takes K pauses; its "
           "'after j pauses' columns force it to stop earlier. Gain = ce's nll - the run's.", "",
           "| run | options | nll after 0 pauses | nll after K pauses | accuracy | gain over ce | train seconds |",
           "|---|---|---|---|---|---|---|"]
  for run, row in rows.items():
    options_text = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in row["hparams"].items()) or "default"
    lines.append(f"| {run} | {options_text} | {row['nll_at_step'][0]:.4f} | {row['nll_at_step'][-1]:.4f} | "
                 f"{row['accuracy']:.4f} | {row['gain_over_ce']:+.4f} | {row['seconds']:.0f} |")
  lines += ["", f"Chosen for the grid: **{chosen}** (lowest nll after K pauses); a forced pause "
            + ("pays" if result["pause_pays"] else "does not pay") + f" here ({rows[chosen]['gain_over_ce']:+.4f} "
            "nats/token against ce)."]
  with open(path[:-len(".json")] + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return result


def run_setting(name: str, quick: bool, out_dir: str, seed: int = 0, only: tuple[str, ...] = (),
                add_to: str = "") -> dict:
  """Trains (or reads the records of) every run of the setting, or only the CYB runs named in `only`, then
  summarizes.

  add_to: a results JSON of the same setting and seed; its runs (baselines included) are read from it
  instead of trained, and only the `only` runs it lacks are trained and added.
  """
  runner = _Runner(name, quick, out_dir, seed)
  setting = runner.setting
  only = only or tuple(setting.get("runs", ()))
  previous = {}
  if add_to:
    with open(add_to, encoding="utf-8") as f:
      old = json.load(f)
    if (old["setting"], old.get("seed", 0), old["quick"]) != (name, seed, quick):
      raise SystemExit(f"--add_runs: {add_to} holds setting {old['setting']!r} seed {old.get('seed', 0)} "
                       f"quick {old['quick']}, not {name!r} seed {seed} quick {quick}")
    previous = {"runs": old["runs"], "seconds": old["seconds"]}
  chosen = all_runs(setting.get("grid", True) or bool(only), on_request=bool(only))
  if only:
    known = [run for run, _, _ in all_runs(on_request=True)]
    unknown = sorted(set(only) - set(known))
    if unknown:
      raise SystemExit(f"--runs: unknown run(s) {unknown}; known: {known}")
    chosen = [entry for entry in chosen if entry[1] in BASELINES or entry[0] in only]
    # Baselines first, then the CYB runs in the order named (a grid cut short by time lacks the last ones).
    chosen.sort(key=lambda entry: -1 if entry[1] in BASELINES else only.index(entry[0]))
  pause_run, pause_options = chosen_pause_option(name, quick, out_dir, seed)
  timings = dict(previous.get("seconds", {}))
  chosen = [entry for entry in chosen if entry[0] not in previous.get("runs", {})]
  if "pretrain_steps" in setting:
    timings["pretrain"] = runner.pretrain()
  runs = dict(previous.get("runs", {}))
  for run, objective, overrides in chosen:
    steps = runner.steps * BASELINE_FACTOR.get(objective, 1)
    if objective == "ce":
      record = runner.run(run, objective, overrides, steps)
    elif objective == "pause_ce":  # the precondition's choice, under its own name and work directory
      record = runner.run(pause_run, objective, pause_options, steps)
    else:
      record = runner.run(run, objective, {**pause_options, **overrides}, steps)
    timings[run] = record["seconds"]
    runs[run] = {"objective": objective, "hparams": record["hparams"], "records": record["records"]}
  return summarize(name, quick, runs, timings, runner.steps, out_dir, seed)


def _at_step(records: list[dict], step: int) -> dict:
  matches = [r for r in records if r["step"] == step]
  if not matches:
    raise ValueError(f"no eval record at step {step}")
  return matches[0]


def summarize(name: str, quick: bool, runs: dict, timings: dict, cyb_steps: int, out_dir: str,
              seed: int = 0) -> dict:
  """Multiples from the eval curves; writes the JSON, plot and table.

  `runs`: run name -> {"objective", "hparams", "records"}. CYB runs end at `cyb_steps`; baselines go on.
  """
  curve = {run: ([r["tokens"] for r in v["records"]], [r["nll_policy"] for r in v["records"]])
           for run, v in runs.items()}
  # Every number compared at equal data is read at the CYB runs' last step.
  at_budget = {run: _at_step(v["records"], cyb_steps) for run, v in runs.items()}
  budget_tokens = at_budget[BASELINES[0]]["tokens"]
  # The CYB objectives that have runs (`--runs` may train a subset); every table below covers these.
  cyb_runs = {c: names for c in CYB if (names := [run for run, v in runs.items() if v["objective"] == c])}
  if not cyb_runs:
    raise ValueError(f"no CYB run to summarize among {sorted(runs)}")
  missing = [b for b in BASELINES if b not in runs]
  if missing:
    raise ValueError(f"the baselines {missing} have no run; every summary compares against both")
  best = {c: min(names, key=lambda run: at_budget[run]["nll_policy"]) for c, names in cyb_runs.items()}

  def multiples_for(run: str) -> tuple[dict, dict]:
    forward, converse = {}, {}
    for baseline in BASELINES:
      tokens, nll = curve[baseline]
      forward[baseline] = efficiency.data_efficiency_multiple(tokens, nll, budget_tokens,
                                                              at_budget[run]["nll_policy"])
      # Converse: the baseline's quality at the same budget, and how soon the CYB run got there.
      upto = [i for i, t in enumerate(tokens) if t <= budget_tokens]
      converse[baseline] = efficiency.baseline_final_multiple([tokens[i] for i in upto], [nll[i] for i in upto],
                                                              *curve[run])
    return forward, converse

  per_run = {run: multiples_for(run) for run in runs if runs[run]["objective"] in CYB}
  multiples = {b: {c: per_run[best[c]][0][b] for c in best} for b in BASELINES}
  converse = {b: {c: per_run[best[c]][1][b] for c in best} for b in BASELINES}
  headline = {**{b: b for b in BASELINES}, **best}  # objective -> the run reported for it
  result = {
      "setting": name, "quick": quick, "seed": seed,
      "budget_tokens": budget_tokens,
      "baseline_factor": BASELINE_FACTOR,
      "multiple": {b: {c: m.value for c, m in row.items()} for b, row in multiples.items()},
      "multiple_bound": {b: {c: m.bound for c, m in row.items()} for b, row in multiples.items()},
      "baseline_final_multiple": {b: {c: m.value for c, m in row.items()} for b, row in converse.items()},
      "baseline_final_multiple_bound": {b: {c: m.bound for c, m in row.items()} for b, row in converse.items()},
      "best_run": best,
      "final_nll_policy": {o: at_budget[run]["nll_policy"] for o, run in headline.items()},
      "final_accuracy": {o: at_budget[run]["accuracy"] for o, run in headline.items()},
      "mean_pauses": {o: at_budget[run]["mean_pauses"] for o, run in headline.items()},
      "baseline_end_nll_policy": {b: curve[b][1][-1] for b in BASELINES},
      "tokens": [t for t in curve[BASELINES[0]][0] if t <= budget_tokens],
      "curves": {run: {"tokens": t, "nll_policy": y} for run, (t, y) in curve.items()},
      "pause_rate_by_difficulty": {o: at_budget[run].get("mean_pauses_by_difficulty")
                                   for o, run in headline.items()},
      "accuracy_by_difficulty": {o: at_budget[run].get("accuracy_by_difficulty") for o, run in headline.items()},
      "grid": {run: {"objective": runs[run]["objective"], "hparams": runs[run]["hparams"],
                     "nll_policy": at_budget[run]["nll_policy"], "mean_pauses": at_budget[run]["mean_pauses"],
                     "multiple": {b: per_run[run][0][b].value for b in BASELINES},
                     "multiple_bound": {b: per_run[run][0][b].bound for b in BASELINES}}
               for run in per_run},
      "runs": runs,
      "seconds": timings,
  }
  matched = compute_matched(at_budget, best)
  if matched:
    result["compute_matched"] = matched
  write_outputs(result, multiples, converse, per_run, out_dir)
  return result


def compute_matched(at_budget: dict, best: dict) -> dict:
  """Quality at equal inference pauses per token, at the budget (empty without a threshold sweep).

  For each reported CYB run, every point of its threshold sweep (tau, mean pauses, nll_policy) beside
  the fixed-pause baseline at the same mean pauses: pause_ce forced to stop at j = 0..K pauses
  (`nll_at_step`), interpolated between neighbouring j (stopping a random fraction of tokens one pause
  early; efficiency.interpolate_pauses). ce, which never pauses, is the 0-pause reference.
  """
  forced = at_budget["pause_ce"].get("nll_at_step")
  if not forced or not any(at_budget[run].get("tau_sweep") for run in best.values()):
    return {}
  steps = list(range(len(forced)))
  out = {"pause_ce_forced_nll": list(forced), "ce_nll": at_budget["ce"]["nll_policy"], "sweeps": {}}
  for objective, run in best.items():
    if not at_budget[run].get("tau_sweep"):
      continue  # a run from before training evals kept the sweep
    out["sweeps"][objective] = [
        {"tau": point["tau"], "mean_pauses": point["mean_pauses"], "nll_policy": point["nll_policy"],
         "pause_ce_nll": efficiency.interpolate_pauses(steps, forced, min(point["mean_pauses"], steps[-1]))}
        for point in at_budget[run].get("tau_sweep") or []]
  return out


def summarize_seeds(setting: str, seeds: list[int], out_dir: str, only: tuple[str, ...] = ()) -> dict:
  """Each seed's multiples for the same CYB runs, and their median, from the seeds' results JSON.

  Reads `out_dir/data_efficiency_<setting>[_seed<s>].json` (written by `summarize`); `only`: the CYB runs
  to report (default: every run all seeds have). Writes data_efficiency_<setting>_seeds.{json,md}.
  Raises ValueError naming a missing file or a run some seed lacks.
  """
  results = {}
  for seed in seeds:
    path = os.path.join(out_dir, f"data_efficiency_{setting}" + _suffix(False, seed) + ".json")
    if not os.path.exists(path):
      raise ValueError(f"no results for seed {seed}: {path} does not exist (run the setting with --seed={seed})")
    with open(path, encoding="utf-8") as f:
      results[seed] = json.load(f)
  common = [run for run in results[seeds[0]]["grid"] if all(run in r["grid"] for r in results.values())]
  chosen = list(only) or common
  missing = [(run, seed) for run in chosen for seed in seeds if run not in results[seed]["grid"]]
  if missing:
    raise ValueError(f"run {missing[0][0]!r} has no results for seed {missing[0][1]}; runs all seeds have: {common}")

  def multiple(seed, run, baseline):
    row = results[seed]["grid"][run]
    return efficiency.Multiple(row["multiple"][baseline], row["multiple_bound"][baseline])

  table = {}
  for run in chosen:
    table[run] = {"objective": results[seeds[0]]["grid"][run]["objective"]}
    for baseline in BASELINES:
      per_seed = [multiple(seed, run, baseline) for seed in seeds]
      table[run][baseline] = {"per_seed": [m.to_json() for m in per_seed],
                              "median": efficiency.median_multiple(per_seed).to_json()}
    table[run]["nll_policy"] = [results[seed]["grid"][run]["nll_policy"] for seed in seeds]
    table[run]["mean_pauses"] = [results[seed]["grid"][run]["mean_pauses"] for seed in seeds]
  summary = {"setting": setting, "seeds": seeds, "runs": table,
             "baseline_nll_policy": {b: [results[seed]["final_nll_policy"][b] for seed in seeds]
                                     for b in BASELINES},
             "compute_matched": {seed: results[seed]["compute_matched"] for seed in seeds
                                 if "compute_matched" in results[seed]}}
  stem = os.path.join(out_dir, f"data_efficiency_{setting}_seeds")
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump(metrics_writer.to_json_types(summary), f, indent=1)
  shown = lambda m: str(efficiency.Multiple(m["value"], m["bound"]))  # noqa: E731
  seed_columns = " | ".join(f"seed {seed}" for seed in seeds)
  lines = [f"# Data efficiency: {setting}, seeds {', '.join(map(str, seeds))}", "",
           "The same CYB runs on every seed (picked on the first seed's grid, then fixed), so the median is not "
           "a best-of per seed. "
           "Multiple as in each seed's table (>= : the baseline never got there; <= : it was there at its "
           "first checkpoint; ~ : bounds on both sides of the median). Targets: >= 3 against ce, >= 2 against "
           "pause_ce.", "",
           f"| run | baseline | {seed_columns} | median |", "|---|---|" + "---|" * len(seeds) + "---|"]
  for run, row in table.items():
    for baseline in BASELINES:
      cells = " | ".join(shown(m) for m in row[baseline]["per_seed"])
      lines.append(f"| {run} | {baseline} | {cells} | **{shown(row[baseline]['median'])}** |")
  lines += ["", "nll_policy at the budget (nats/token; mean pauses in brackets for CYB):", "",
            f"| run | {seed_columns} |", "|---|" + "---|" * len(seeds)]
  for baseline, values in summary["baseline_nll_policy"].items():
    lines.append(f"| {baseline} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
  for run, row in table.items():
    lines.append(f"| {run} | " + " | ".join(f"{v:.4f} ({p:.2f})" for v, p in zip(row["nll_policy"], row["mean_pauses"]))
                 + " |")
  for seed, matched in summary["compute_matched"].items():
    lines += ["", f"Compute-matched (seed {seed}):", ""] + _matched_lines(matched)
  with open(stem + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return summary


# Thresholds shown in the compute-matched Markdown table (the JSON keeps the whole sweep).
MATCHED_TAUS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _matched_lines(matched: dict) -> list[str]:
  forced = ", ".join(f"{j} pauses {v:.4f}" for j, v in enumerate(matched["pause_ce_forced_nll"]))
  lines = [f"pause_ce forced to stop: {forced}; ce (never pauses): {matched['ce_nll']:.4f}. Each CYB threshold "
           "beside pause_ce at the same mean pauses per token (stopping a random fraction of tokens one pause "
           "early).", "",
           "| objective | tau | mean pauses | nll_policy (CYB) | nll (pause_ce, same pauses) |", "|---|---|---|---|---|"]
  for objective, sweep in matched["sweeps"].items():
    for point in sweep:
      if any(abs(point["tau"] - t) < 1e-9 for t in MATCHED_TAUS):
        lines.append(f"| {objective} | {point['tau']:g} | {point['mean_pauses']:.3f} | {point['nll_policy']:.4f} | "
                     f"{point['pause_ce_nll']:.4f} |")
  return lines


def resummarize(path: str, out_dir: str) -> dict:
  """Recomputes multiples and outputs from a results JSON (its per-run eval records), without training."""
  with open(path, encoding="utf-8") as f:
    old = json.load(f)
  steps = max(r["step"] for run in old["runs"].values() if run["objective"] in CYB for r in run["records"])
  return summarize(old["setting"], old["quick"], old["runs"], old["seconds"], steps, out_dir, old.get("seed", 0))


def write_outputs(result: dict, multiples: dict, converse: dict, per_run: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, f"data_efficiency_{result['setting']}" + _suffix(result["quick"], result["seed"]))
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump(metrics_writer.to_json_types(result), f, indent=1)

  fig, ax = plt.subplots(figsize=(7, 4.5))
  floor = 1e-4  # log axis: a perfect model's nll of 0 is drawn at the floor
  for run, curve in result["curves"].items():
    objective = result["runs"][run]["objective"]
    if objective in CYB and run != result["best_run"][objective]:
      continue  # the grid's other settings are in the table, not the plot
    ax.plot(curve["tokens"], [max(v, floor) for v in curve["nll_policy"]],
            "o-" if objective in CYB else "s--", markersize=3, label=run)
  ax.axvline(result["budget_tokens"], color="gray", lw=0.8, ls=":")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("training tokens (dotted: the CYB runs' budget)")
  ax.set_ylabel(f"eval nll_policy (nats/token, floor {floor:g})")
  ax.set_title(f"Data efficiency: {result['setting']}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(stem + ".png", dpi=100)
  plt.close(fig)

  factor = ", ".join(f"{b} {f}x" for b, f in BASELINE_FACTOR.items())
  lines = [f"# Data efficiency: {result['setting']}" + (f" (seed {result['seed']})" if result["seed"] else ""), "",
           f"Numbers at the CYB runs' budget of {result['budget_tokens']:,} training tokens; the baselines "
           f"train on ({factor}) so their curves extend past it. CYB rows: the grid setting with the best "
           "nll_policy (all settings in the last table).", "",
           "| objective | run | nll_policy | accuracy | mean pauses | baseline nll at its end | train seconds |",
           "|---|---|---|---|---|---|---|"]
  cyb = [c for c in CYB if c in result["best_run"]]
  for objective in [*BASELINES, *cyb]:
    run = result["best_run"].get(objective, objective)
    end = result["baseline_end_nll_policy"].get(objective)
    lines.append(f"| {objective} | {run} | {result['final_nll_policy'][objective]:.4f} | "
                 f"{result['final_accuracy'][objective]:.4f} | {result['mean_pauses'][objective]:.3f} | "
                 f"{'' if end is None else f'{end:.4f}'} | {result['seconds'].get(run, 0):.0f} |")
  lines += ["", "Multiple = tokens the baseline needs to reach the CYB model's nll_policy / tokens the CYB model "
            "used (>= : the baseline never got there in its longer run; <= : it was already there at its "
            "first checkpoint). Targets: >= 3 against ce, >= 2 against pause_ce.", "",
            "| baseline | " + " | ".join(cyb) + " |", "|---|" + "---|" * len(cyb)]
  for baseline, row in multiples.items():
    lines.append(f"| {baseline} | " + " | ".join(str(row[c]) for c in cyb) + " |")
  lines += ["", "Converse: budget / tokens the CYB model needed to reach the baseline's nll_policy at the same "
            "budget (<= : the CYB model never got there).", "",
            "| baseline | " + " | ".join(cyb) + " |", "|---|" + "---|" * len(cyb)]
  for baseline, row in converse.items():
    lines.append(f"| {baseline} | " + " | ".join(str(row[c]) for c in cyb) + " |")
  lines += ["", "Every CYB setting tried:", "",
            "| run | hyperparameters | nll_policy | mean pauses | multiple vs ce | multiple vs pause_ce |",
            "|---|---|---|---|---|---|"]
  for run, row in result["grid"].items():
    hparams = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in row["hparams"].items())
    lines.append(f"| {run} | {hparams} | {row['nll_policy']:.4f} | {row['mean_pauses']:.3f} | "
                 f"{per_run[run][0]['ce']} | {per_run[run][0]['pause_ce']} |")
  if "compute_matched" in result:
    lines += ["", "Quality at equal inference pauses (compute-matched, at the budget):", ""]
    lines += _matched_lines(result["compute_matched"])
    _plot_matched(result["compute_matched"], stem + "_compute.png", result["setting"])
  with open(stem + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def _plot_matched(matched: dict, path: str, setting: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4.2))
  forced = matched["pause_ce_forced_nll"]
  ax.plot(range(len(forced)), forced, "s--", color="gray", label="pause_ce, forced stops (mixtures between)")
  ax.plot([0], [matched["ce_nll"]], "kD", label="ce")
  for objective, sweep in matched["sweeps"].items():
    ax.plot([p["mean_pauses"] for p in sweep], [p["nll_policy"] for p in sweep], "o-", markersize=3,
            label=f"{objective}, threshold sweep")
  ax.set_yscale("log")
  ax.set_xlabel("mean pauses per token (inference compute)")
  ax.set_ylabel("eval nll_policy (nats/token)")
  ax.set_title(f"Quality at equal pauses: {setting}, at the budget")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
  parser.add_argument("--resummarize", action="store_true",
                      help="recompute the tables from results/data_efficiency_<setting>.json, no training")
  parser.add_argument("--quick", action="store_true", help="tiny smoke run")
  parser.add_argument("--precondition", action="store_true",
                      help="train ce and the setting's pause_ce variants for the CYB budget and write the "
                      "precondition table (does a forced pause pay?), which picks the grid's pause options")
  parser.add_argument("--seed", type=int, default=0, help="run seed (data order and initialisation)")
  parser.add_argument("--runs", default="", help="comma-separated CYB runs to train, e.g. cyb_ap,cyb_va@beta.03 "
                      "(default: the setting's grid); the baselines always run")
  parser.add_argument("--add_runs", action="store_true",
                      help="train only the --runs CYB runs missing from results/data_efficiency_<setting>[_seed<s>]"
                      ".json and add them to it (its baselines and other runs are read, not retrained)")
  parser.add_argument("--across_seeds", default="",
                      help="comma-separated seeds, e.g. 0,1,2: summarize their results JSON (each seed's median "
                      "multiple for the --runs CYB runs), no training")
  parser.add_argument("--out", default=os.path.join(ROOT, "results"))
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  logging.getLogger("cyb_jax").setLevel(logging.INFO)
  start = time.time()
  if args.across_seeds:
    try:
      seeds = [int(s) for s in args.across_seeds.split(",")]
      summarize_seeds(args.setting, seeds, args.out, parse_runs(args.runs))
    except ValueError as error:
      raise SystemExit(f"--across_seeds: {error}") from None
    return
  if args.resummarize:
    stem = f"data_efficiency_{args.setting}" + _suffix(args.quick, args.seed)
    resummarize(os.path.join(args.out, stem + ".json"), args.out)
    return
  if args.precondition:
    run_precondition(args.setting, args.quick, args.out, args.seed)
    print(f"total {time.time() - start:.0f} s")
    return
  add_to = ""
  if args.add_runs:
    add_to = os.path.join(args.out, f"data_efficiency_{args.setting}" + _suffix(args.quick, args.seed) + ".json")
    if not os.path.exists(add_to) or not args.runs:
      raise SystemExit(f"--add_runs needs --runs and an existing {add_to}")
  run_setting(args.setting, args.quick, args.out, args.seed, parse_runs(args.runs), add_to)
  print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
