"""From an ml_collections config to typed settings, checked before anything is compiled.

Every check raises `ConfigError` (a ValueError) with a one-line message that names the config key, so a
bad command line fails in a second rather than after compilation or, worse, mid-run.
"""

from __future__ import annotations

import codecs
import copy
import dataclasses
import difflib
import functools
import importlib.util
import math
import os
from typing import Any, Optional

import ml_collections
import numpy as np

from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax import pretrained
from cyb_jax.data import pipeline as data_pipeline
from cyb_jax.data import text as text_lib
from cyb_jax.data import tokenizer as tokenizer_lib
from cyb_jax.inference import policies
from cyb_jax.training import train_state


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
  """The objective's name and the keyword arguments `losses.objective_loss` takes for it."""

  name: str
  hparams: dict
  budget: Optional[float]      # CYB-DP target pauses per token, None = fixed cost
  initial_cost: float
  dual_lr: float

  def loss_kwargs(self) -> dict:
    return dict(self.hparams)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the trainer needs, validated."""

  config: ml_collections.ConfigDict
  model: model_lib.ModelConfig
  data: data_pipeline.DataConfig
  data_info: data_pipeline.DataInfo
  objective: ObjectiveSettings
  num_pauses: int


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config key {key!r} is missing")
    node = node[part]
  return node


def _require(condition: bool, key: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config.{key} {message}")


def unknown_key_message(section: str, unknown: list, known) -> str:
  """'config.<section>.<key> is not a known key (did you mean <section>.<closest>?)' for each unknown
  key, joined by '; '."""
  return "; ".join(_unknown_key(section, key, known) for key in unknown)


def _unknown_key(section: str, key: str, known) -> str:
  prefix = f"{section}." if section else ""
  close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
  # An abbreviation by initials (lr -> learning_rate) or a prefix (warmup -> warmup_steps).
  close = close or sorted(k for k in known if "".join(w[:1] for w in k.split("_")) == key.lower()
                          or k.startswith(key.lower()))[:1]
  hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known: {sorted(known)}"
  return f"config.{prefix}{key} is not a known key{hint}"


@functools.lru_cache(maxsize=1)
def _default_keys() -> dict:
  """{section: set of keys} of configs/default.py, the schema every config file derives from."""
  from cyb_jax import cli  # pylint: disable=g-import-not-at-top  (absl only)
  if not os.path.isfile(cli.DEFAULT_CONFIG):  # installed without the repository's configs/
    return {"": None}
  spec = importlib.util.spec_from_file_location("_cyb_default_config", cli.DEFAULT_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  default = module.get_config().to_dict()
  keys = {"": set(default)}
  for section, value in default.items():
    if isinstance(value, dict):
      keys[section] = set(value)
  return keys


def check_known_keys(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every key that configs/default.py does not define, each with the closest
  valid one: a misspelt key in a config file (`objective.gama = 0.5`) would otherwise add a new key that
  nothing reads, silently. `model.*` and `data.*` are checked against their dataclasses' fields."""
  schema = _default_keys()
  values = config.to_dict()
  problems = []
  if schema[""] is not None:
    unknown = sorted(set(values) - schema[""])
    if unknown:
      problems.append(unknown_key_message("", unknown, schema[""]))
  sections = {section: known for section, known in schema.items() if section}
  sections["model"] = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  sections["data"] = {f.name for f in dataclasses.fields(data_pipeline.DataConfig)}
  for section, known in sorted(sections.items()):
    value = values.get(section)
    if isinstance(value, dict):
      unknown = sorted(set(value) - known)
      if unknown:
        problems.append(unknown_key_message(section, unknown, known))
  if problems:
    raise ConfigError("; ".join(problems))


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite_floats(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every float setting that is NaN or infinite as the float32 the run
  computes in (`1e39` is a finite Python float but inf in float32: a learning rate of 1e39 would pass
  every range check and kill the run at its first update)."""
  def walk(prefix: str, value) -> list:
    if isinstance(value, dict):
      return [bad for key, item in sorted(value.items()) for bad in walk(f"{prefix}{key}.", item)]
    if isinstance(value, (list, tuple)):
      return [bad for index, item in enumerate(value) for bad in walk(f"{prefix[:-1]}[{index}].", item)]
    if isinstance(value, (float, np.floating)) and not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
      return [f"config.{prefix[:-1]} = {float(value)!r}"]
    return []
  bad = walk("", config.to_dict())
  if bad:
    raise ConfigError(f"{'; '.join(bad)}: not a finite float32 number (the run computes in float32, whose "
                      f"largest value is {_FLOAT32_MAX:.4g})")


def check_output_dir(path: str, name: str) -> None:
  """Raises ConfigError (naming `name`, e.g. "--workdir") when `path` could not be created or written by
  this process: checked before any work, so a run never finds out after hours. Creates nothing."""
  path = os.path.abspath(path)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f"{name} {path!r} cannot be created: {existing!r} is a file, not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    where = "" if existing == path else f" (its nearest existing parent {existing!r} is not writable)"
    raise ConfigError(f"{name} {path!r} is not writable{where}")


def objective_settings(config: ml_collections.ConfigDict, num_pauses: int) -> ObjectiveSettings:
  name = _get(config, "objective.name")
  _require(name in losses.OBJECTIVES, "objective.name", f"must be one of {losses.OBJECTIVES}, got {name!r}")
  gamma = float(_get(config, "objective.gamma"))
  omega = float(_get(config, "objective.omega"))
  beta = float(_get(config, "objective.beta"))
  cost = float(_get(config, "objective.cost"))
  budget = _get(config, "objective.budget")
  dual_lr = float(_get(config, "objective.dual_lr"))
  anytime_weight = float(_get(config, "objective.anytime_weight"))
  prior_p = float(_get(config, "objective.prior_p"))
  _require(0.0 < gamma <= 1.0, "objective.gamma", f"must lie in (0, 1], got {gamma}")
  _require(0.0 <= omega < 1.0, "objective.omega", f"must lie in [0, 1), got {omega}")
  _require(beta >= 0.0, "objective.beta", f"must be >= 0, got {beta}")
  _require(cost >= 0.0, "objective.cost", f"must be >= 0, got {cost}")
  _require(budget is None or budget >= 0.0, "objective.budget", f"must be >= 0 (or None), got {budget}")
  _require(budget is None or budget <= num_pauses, "objective.budget",
           f"= {budget} exceeds num_pauses = {num_pauses}: the budget can never be met")
  _require(dual_lr >= 0.0, "objective.dual_lr", f"must be >= 0, got {dual_lr}")
  _require(anytime_weight >= 0.0, "objective.anytime_weight", f"must be >= 0, got {anytime_weight}")
  # p = 1 would put zero prior mass on every pause step, and KL(h || prior) would be infinite.
  _require(0.0 < prior_p < 1.0, "objective.prior_p", f"must lie in (0, 1), got {prior_p}")
  if name in ("pause_ce", "cyb_ap", "cyb_va", "cyb_dp"):
    _require(num_pauses >= 1 or name != "pause_ce", "num_pauses", "must be >= 1 for objective pause_ce")
  hparams = {}
  if name == "cyb_ap":
    hparams = dict(gamma=gamma, omega=omega)
  elif name == "cyb_va":
    hparams = dict(prior=tuple(float(p) for p in losses.geometric_prior(num_pauses + 1, prior_p)),
                   beta=beta)
  if name in ("cyb_ap", "cyb_va", "cyb_dp") and anytime_weight > 0:
    hparams["anytime_weight"] = anytime_weight
  return ObjectiveSettings(name=name, hparams=hparams, budget=None if budget is None else float(budget),
                           initial_cost=cost, dual_lr=dual_lr)


# config.model fields a pretrained checkpoint does not decide: how pauses are added and how it runs.
RUN_MODEL_FIELDS = ("max_pauses", "dtype", "remat", "scan_layers", "attention", "attention_block",
                    "dk_init_prob", "pause_context", "pause_feedback", "pause_feedback_layer",
                    "pause_reads_token")


def init_keep_pauses(config: ml_collections.ConfigDict) -> bool:
  """`config.init_keep_pauses`, or False (configs written before the option existed have no such key)."""
  return bool(config.get("init_keep_pauses", False))


def skip_batches(config: ml_collections.ConfigDict) -> int:
  """`config.train.skip_batches`, or 0 (configs written before the option existed have no such key)."""
  return int(config.train.get("skip_batches", 0))


def final_eval_batches(config: ml_collections.ConfigDict) -> int:
  """`config.train.final_eval_batches`, or 0 = the whole eval split (configs written before the option)."""
  return int(config.train.get("final_eval_batches", 0))


def init_from_hf(config: ml_collections.ConfigDict) -> str:
  """`config.init_from_hf`, or "" (configs written before the option existed have no such key)."""
  return str(config.get("init_from_hf", "") or "")


def _check_pretrained_source(path: str) -> None:
  """`config.init_from_hf` names a Hugging Face directory or an existing GGUF file."""
  if pretrained.is_gguf(path):
    _require(os.path.isfile(path), "init_from_hf", f"= {path!r}: no such GGUF file")
  else:
    _require(os.path.isdir(path), "init_from_hf", f"= {path!r} is neither a Hugging Face checkpoint "
             "directory nor a .gguf file")


def data_config(config: ml_collections.ConfigDict, workdir: Optional[str] = None,
                write_files: bool = True) -> data_pipeline.DataConfig:
  """The data settings, validated; the tokenizer resolved to the file it reads.

  With `init_from_hf`, an "hf" tokenizer without a path reads the checkpoint's directory. A "bpe"
  tokenizer without a path is the work directory's tokenizer.json, trained there first if absent (only
  when `workdir` is given and `write_files`; eval.py reads an existing one).
  """
  values = config.data.to_dict()
  try:
    data = data_pipeline.DataConfig.from_any(values)
  except (TypeError, ValueError) as error:
    raise ConfigError(f"config.data: {error}") from None
  _require(data.name in data_pipeline.known_sources(), "data.name",
           f"must be one of {data_pipeline.known_sources()}, got {data.name!r}")
  if data.name == data_pipeline.TEXT_FILE:
    _require(bool(data.text_path), "data.text_path", "is required for data.name='text_file'")
    _require(isinstance(data.eval_fraction, (int, float)) and 0.0 < data.eval_fraction < 1.0,
             "data.eval_fraction", f"must lie in (0, 1), got {data.eval_fraction!r}")
    if not os.path.isfile(data.text_path) and not os.path.isdir(data.text_path):
      raise ConfigError(f"config.data.text_path: no such file or folder {data.text_path!r}")
    if os.path.isfile(data.text_path) and os.path.getsize(data.text_path) == 0:
      raise ConfigError(f"config.data.text_path: file {data.text_path!r} is empty")
    try:
      codecs.lookup(data.encoding)
    except (LookupError, TypeError):
      raise ConfigError(f"config.data.encoding: unknown encoding {data.encoding!r}") from None
    _require(data.special_text in text_lib.SPECIAL_TEXT_MODES, "data.special_text",
             f"must be one of {text_lib.SPECIAL_TEXT_MODES}, got {data.special_text!r}")
    _require(isinstance(data.text_field, str) and bool(data.text_field), "data.text_field",
             f"must name a JSON field, got {data.text_field!r}")
  _require(data.tokenizer in tokenizer_lib.KNOWN_TOKENIZERS, "data.tokenizer",
           f"must be one of {tokenizer_lib.KNOWN_TOKENIZERS}, got {data.tokenizer!r}")
  hf_dir = init_from_hf(config)
  if hf_dir:
    _check_pretrained_source(hf_dir)
    _require(data.tokenizer == "hf", "data.tokenizer", f"must be 'hf' with config.init_from_hf (a pretrained "
             f"model reads its own tokenizer's ids), got {data.tokenizer!r}")
  if data.tokenizer == "hf" and not data_pipeline.tokenizer_path(data):
    _require(bool(hf_dir), "data.tokenizer_path", "is required for data.tokenizer='hf' (a Hugging Face "
             "model directory or GGUF file), unless config.init_from_hf names one")
    data = dataclasses.replace(data, tokenizer_path=hf_dir)
  if data.tokenizer == "bpe":
    _require(data.bpe_vocab_size >= tokenizer_lib.MIN_BPE_VOCAB, "data.bpe_vocab_size",
             f"must be >= {tokenizer_lib.MIN_BPE_VOCAB} (256 bytes + 2 special tokens), got "
             f"{data.bpe_vocab_size}")
    if not data_pipeline.tokenizer_path(data):
      _require(workdir is not None, "data.tokenizer_path", "is required for data.tokenizer='bpe' here "
               "(the trainer trains it into the work directory)")
      trained = os.path.join(workdir, data_pipeline.BPE_FILE)
      _require(write_files or os.path.isfile(trained), "data.tokenizer",
               f"'bpe': the run's tokenizer {trained!r} does not exist (was the run trained here?)")
      try:
        data = data_pipeline.prepare_tokenizer(data, workdir, write=write_files)
      except text_lib.DataFileError as error:
        raise ConfigError(f"config.data.text_path: {error}") from None
      except (OSError, ValueError) as error:
        raise ConfigError(f"config.data.tokenizer='bpe': {error}") from None
  path = data_pipeline.tokenizer_path(data)
  if data.tokenizer != "byte" and not os.path.exists(path):
    raise ConfigError(f"config.data.tokenizer_path: no file or directory {path!r} for tokenizer "
                      f"{data.tokenizer!r}")
  return data


def model_config(config: ml_collections.ConfigDict, info: data_pipeline.DataInfo) -> model_lib.ModelConfig:
  hf_dir = init_from_hf(config)
  if hf_dir:
    return _pretrained_model_config(config, hf_dir, info)
  values = config.model.to_dict()
  if values["vocab_size"] == 0:
    values["vocab_size"] = info.vocab_size
  elif values["vocab_size"] != info.vocab_size:
    raise ConfigError(f"config.model.vocab_size = {values['vocab_size']} differs from the data's "
                      f"vocabulary ({info.vocab_size}); use 0 to take it from the data")
  if values["max_len"] == 0:
    values["max_len"] = info.seq_len
  _require(values["max_len"] >= info.seq_len, "model.max_len",
           f"= {values['max_len']} is shorter than the data's sequence length {info.seq_len}")
  known = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(unknown_key_message("model", unknown, known))
  try:
    return model_lib.ModelConfig(**values)
  except ValueError as error:
    raise ConfigError(f"config.{error}") from None


def _pretrained_model_config(config: ml_collections.ConfigDict, hf_dir: str,
                             info: data_pipeline.DataInfo) -> model_lib.ModelConfig:
  """The architecture of the checkpoint in `hf_dir`, with this config's pause and run options."""
  _require(not config.init_from, "init_from", "and config.init_from_hf are both set; choose one")
  _check_pretrained_source(hf_dir)
  try:
    hf = pretrained.read_pretrained_config(hf_dir)
    architecture = pretrained.model_config_from_hf(hf)
  except (OSError, ValueError) as error:
    raise ConfigError(f"config.init_from_hf: {error}") from None
  run_options = {key: config.model[key] for key in RUN_MODEL_FIELDS if key in config.model}
  try:
    model = dataclasses.replace(architecture, **run_options)
  except ValueError as error:  # the message names the model.* field
    raise ConfigError(f"config.{error}") from None
  _require(model.max_len >= info.seq_len, "data.seq_len",
           f"= {info.seq_len} exceeds the checkpoint's max_position_embeddings {model.max_len}")
  return model


def settings_from_config(config: ml_collections.ConfigDict, *, device_count: int,
                         process_count: int = 1, workdir: Optional[str] = None,
                         write_files: bool = True) -> Settings:
  """Validates `config` and turns it into typed `Settings`; raises ConfigError naming the bad key.

  `workdir`: the run's directory, where a "bpe" tokenizer is trained (with `write_files`) or read.
  """
  check_known_keys(config)
  check_finite_floats(config)
  if workdir is not None and write_files:
    check_output_dir(workdir, "--workdir")
  num_devices = int(_get(config, "mesh.num_devices"))
  _require(num_devices == -1 or 1 <= num_devices <= device_count, "mesh.num_devices",
           f"must be -1 or in [1, {device_count}] (the devices there are), got {num_devices}")
  _require(process_count == 1 or num_devices in (-1, device_count), "mesh.num_devices",
           f"must be -1 (all devices) with {process_count} processes, got {num_devices}: every process "
           "must own devices of the mesh")
  if num_devices != -1:
    device_count = num_devices
  num_pauses = _get(config, "num_pauses")
  _require(isinstance(num_pauses, int) and num_pauses >= 0, "num_pauses",
           f"must be a non-negative integer, got {num_pauses!r}")
  data = data_config(config, workdir, write_files)
  try:
    info = data_pipeline.data_info(data)
  except (FileNotFoundError, ImportError, ValueError) as error:
    raise ConfigError(f"config.data: {error}") from None
  model = model_config(config, info)
  if init_from_hf(config) and info.vocab_size > model.vocab_size:
    # Added tokens past the embedding (Gemma 3's) are allowed; ordinary vocabulary there is not.
    try:
      tokenizer_lib.restrict_vocabulary(data_pipeline.configured_tokenizer(data), model.vocab_size)
    except ValueError as error:
      raise ConfigError(f"config.data.tokenizer: {error}") from None
    data = dataclasses.replace(data, vocab_limit=model.vocab_size)
    info = data_pipeline.data_info(data)
  if data.name == data_pipeline.TEXT_FILE:
    # Both splits now, not the eval split after the last training step.
    for split in data_pipeline.SPLITS:
      try:
        data_pipeline.make_source(data, split)
      except text_lib.DataFileError as error:
        raise ConfigError(f"config.data.text_path: {error}") from None
      except ValueError as error:
        raise ConfigError(f"config.data.seq_len = {info.seq_len} with data.eval_fraction = "
                          f"{data.eval_fraction}: {error}") from None
  _require(num_pauses <= model.max_pauses, "num_pauses",
           f"= {num_pauses} exceeds config.model.max_pauses = {model.max_pauses} (raise that too)")
  objective = objective_settings(config, num_pauses)

  train = config.train
  for key in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints"):
    _require(int(train[key]) >= 1, f"train.{key}", f"must be >= 1, got {train[key]}")
  _require(int(train.eval_batches) >= 0, "train.eval_batches", f"must be >= 0, got {train.eval_batches}")
  _require(isinstance(train.get("final_eval_batches", 0), int) and final_eval_batches(config) >= 0,
           "train.final_eval_batches", f"must be an integer >= 0 (0 = the whole eval split), got "
           f"{train.get('final_eval_batches')!r}")
  _require(skip_batches(config) >= 0, "train.skip_batches", f"must be >= 0, got {skip_batches(config)}")
  _require(not skip_batches(config) or data.name != data_pipeline.TFDS, "train.skip_batches",
           "is not supported for TFDS data (each host packs documents at its own pace)")
  _require(train.batch_size % device_count == 0, "train.batch_size",
           f"= {train.batch_size} is not divisible by the device count {device_count}")
  _require(train.batch_size % process_count == 0, "train.batch_size",
           f"= {train.batch_size} is not divisible by the process count {process_count}")

  optim = config.optim
  _require(optim.learning_rate > 0, "optim.learning_rate", f"must be > 0, got {optim.learning_rate}")
  _require(optim.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {optim.warmup_steps}")
  schedule = train_state.schedule_name(optim)
  _require(schedule in train_state.SCHEDULES, "optim.schedule",
           f"must be one of {train_state.SCHEDULES}, got {schedule!r}")
  _require(optim.clip_norm > 0, "optim.clip_norm", f"must be > 0, got {optim.clip_norm}")
  _require(optim.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {optim.weight_decay}")

  try:
    policies.check_policy(config.eval.policy, tau=config.eval.tau, q=config.eval.q)
  except ValueError as error:
    raise ConfigError(f"config.eval: {error}") from None
  _require(all(0 < float(t) < 1 for t in config.eval.tau_sweep), "eval.tau_sweep",
           f"must hold thresholds in (0, 1), got {tuple(config.eval.tau_sweep)}")

  mesh_data, mesh_fsdp = int(config.mesh.data), int(config.mesh.fsdp)
  _require(mesh_fsdp >= 1 or mesh_fsdp == -1, "mesh.fsdp", f"must be -1 (all devices) or >= 1, got {mesh_fsdp}")
  if mesh_fsdp == -1:
    _require(mesh_data in (-1, 1), "mesh.data", f"must be 1 or -1 with mesh.fsdp = -1, got {mesh_data}")
    mesh_fsdp = device_count
  _require(mesh_data == -1 or mesh_data >= 1, "mesh.data", f"must be -1 or >= 1, got {mesh_data}")
  _require(device_count % mesh_fsdp == 0, "mesh.fsdp",
           f"= {mesh_fsdp} does not divide the device count {device_count}")
  if mesh_data != -1:
    _require(mesh_data * mesh_fsdp == device_count, "mesh",
             f"data x fsdp = {mesh_data} x {mesh_fsdp} != device count {device_count}")
  if config.init_from:
    _require(os.path.isdir(config.init_from), "init_from", f"= {config.init_from!r} is not a directory")
    _require(not init_from_hf(config), "init_from", "and config.init_from_hf are both set; choose one")
  _require(not init_keep_pauses(config) or config.init_from, "init_keep_pauses",
           "needs config.init_from (the run whose pause parameters to keep)")
  _require(int(config.seed) >= 0, "seed", f"must be >= 0, got {config.seed}")
  return Settings(config=config, model=model, data=data, data_info=info, objective=objective,
                  num_pauses=num_pauses)


def model_shape(model: model_lib.ModelConfig) -> dict:
  """The fields that decide the parameter shapes (compared when resuming or fine-tuning)."""
  return model_lib.parameter_shapes(model)


def shape_differences(saved: model_lib.ModelConfig, current: model_lib.ModelConfig) -> str:
  """The shape fields on which a checkpoint's model and a config's differ, as "model.width is 16 in the
  checkpoint but 32 here; ..." ("" if none), for one-line errors that name what to change."""
  before, now = model_shape(saved), model_shape(current)
  return "; ".join(f"model.{key} is {before.get(key)!r} in the checkpoint but {now.get(key)!r} here"
                   for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key))


def as_json_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON types (for checkpoints and logs)."""
  def plain(value):
    if isinstance(value, dict):
      return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [plain(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
      return value.item()
    return value
  return plain(config.to_dict())


# How the saved run was started, not what it is: a later eval or sample on the saved config does not
# join the training run's cluster or read its starting point again (the checkpoint holds the weights).
LAUNCH_ONLY = {"distributed": False, "init_from": "", "init_keep_pauses": False}
# data.* fields that do not change what is read (where from and how fast), left out of the comparison.
DATA_READING_ONLY = ("read_threads", "prefetch_batches", "tfds_data_dir")


def with_overrides(values: dict, overrides: Optional[dict] = None) -> ml_collections.ConfigDict:
  """A ConfigDict of the plain dict `values` (e.g. a checkpoint's saved config) with `overrides`
  ({dotted key: value}, as `--config.a.b=v` gives them) set in it; a key the dict lacks is added."""
  values = copy.deepcopy(values)
  for dotted, value in (overrides or {}).items():
    *parents, leaf = dotted.split(".")
    node = values
    for part in parents:
      if not isinstance(node.get(part), dict):
        node[part] = {}
      node = node[part]
    node[leaf] = list(value) if isinstance(value, tuple) else value
  return ml_collections.ConfigDict(values)


def saved_run_config(saved: dict, overrides: Optional[dict] = None) -> ml_collections.ConfigDict:
  """The config a checkpoint was trained with (`meta["config"]`, plain JSON), as the base of eval and
  sampling: launch-only settings (LAUNCH_ONLY) reset, then `overrides` applied."""
  values = {**copy.deepcopy(saved), **LAUNCH_ONLY}
  values["cluster"] = {}
  return with_overrides(values, overrides)


def data_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """The data settings (`data.*`, and `init_from_hf`, whose tokenizer a "hf" run reads) on which
  `config` differs from a checkpoint's saved config `saved` (plain JSON), as
  "data.text_path is 'b.txt' here but 'a.txt' in the checkpoint"; keys either side lacks are skipped."""
  def leaves(tree, prefix):
    if isinstance(tree, dict):
      return {k: v for key, sub in tree.items() for k, v in leaves(sub, f"{prefix}.{key}").items()}
    return {prefix: list(tree) if isinstance(tree, tuple) else tree}
  current = as_json_dict(config)
  before = {**leaves(saved.get("data", {}), "data"), "init_from_hf": saved.get("init_from_hf", "")}
  now = {**leaves(current.get("data", {}), "data"), "init_from_hf": current.get("init_from_hf", "")}
  skipped = {f"data.{key}" for key in DATA_READING_ONLY}
  return [f"{key} is {now[key]!r} here but {before[key]!r} in the checkpoint"
          for key in sorted(set(before) & set(now)) if key not in skipped and before[key] != now[key]]
