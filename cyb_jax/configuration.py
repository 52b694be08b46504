"""From an ml_collections config to typed settings, checked before anything is compiled.

Every check raises `ConfigError` (a ValueError) with a one-line message that names the config key, so a
bad command line fails in a second rather than after compilation or, worse, mid-run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import ml_collections
import numpy as np

from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax import policies
from cyb_jax import train_state
from cyb_jax.data import pipeline as data_pipeline


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


def data_config(config: ml_collections.ConfigDict) -> data_pipeline.DataConfig:
  values = config.data.to_dict()
  try:
    data = data_pipeline.DataConfig.from_any(values)
  except (TypeError, ValueError) as error:
    raise ConfigError(f"config.data: {error}") from None
  _require(data.name in data_pipeline.known_sources(), "data.name",
           f"must be one of {data_pipeline.known_sources()}, got {data.name!r}")
  if data.name == data_pipeline.TEXT_FILE:
    _require(bool(data.text_path), "data.text_path", "is required for data.name='text_file'")
    if not os.path.isfile(data.text_path):
      raise ConfigError(f"config.data.text_path: no such file {data.text_path!r}")
    if os.path.getsize(data.text_path) == 0:
      raise ConfigError(f"config.data.text_path: file {data.text_path!r} is empty")
  return data


def model_config(config: ml_collections.ConfigDict, info: data_pipeline.DataInfo) -> model_lib.ModelConfig:
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
  _require(not unknown, "model", f"has unknown keys {unknown}")
  try:
    return model_lib.ModelConfig(**values)
  except ValueError as error:
    raise ConfigError(f"config.{error}") from None


def settings_from_config(config: ml_collections.ConfigDict, *, device_count: int,
                         process_count: int = 1) -> Settings:
  """Validates `config` and turns it into typed `Settings`; raises ConfigError naming the bad key."""
  num_devices = int(_get(config, "mesh.num_devices"))
  _require(num_devices == -1 or 1 <= num_devices <= device_count, "mesh.num_devices",
           f"must be -1 or in [1, {device_count}] (the devices there are), got {num_devices}")
  if num_devices != -1:
    device_count = num_devices
  num_pauses = _get(config, "num_pauses")
  _require(isinstance(num_pauses, int) and num_pauses >= 0, "num_pauses",
           f"must be a non-negative integer, got {num_pauses!r}")
  data = data_config(config)
  try:
    info = data_pipeline.data_info(data)
  except (FileNotFoundError, ValueError) as error:
    raise ConfigError(f"config.data: {error}") from None
  model = model_config(config, info)
  _require(num_pauses <= model.max_pauses, "num_pauses",
           f"= {num_pauses} exceeds config.model.max_pauses = {model.max_pauses}")
  objective = objective_settings(config, num_pauses)

  train = config.train
  for key in ("num_steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints"):
    _require(int(train[key]) >= 1, f"train.{key}", f"must be >= 1, got {train[key]}")
  _require(int(train.eval_batches) >= 0, "train.eval_batches", f"must be >= 0, got {train.eval_batches}")
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

  mesh_data, mesh_fsdp = int(config.mesh.data), int(config.mesh.fsdp)
  _require(mesh_fsdp >= 1, "mesh.fsdp", f"must be >= 1, got {mesh_fsdp}")
  _require(mesh_data == -1 or mesh_data >= 1, "mesh.data", f"must be -1 or >= 1, got {mesh_data}")
  _require(device_count % mesh_fsdp == 0, "mesh.fsdp",
           f"= {mesh_fsdp} does not divide the device count {device_count}")
  if mesh_data != -1:
    _require(mesh_data * mesh_fsdp == device_count, "mesh",
             f"data x fsdp = {mesh_data} x {mesh_fsdp} != device count {device_count}")
  if config.init_from:
    _require(os.path.isdir(config.init_from), "init_from", f"= {config.init_from!r} is not a directory")
  _require(int(config.seed) >= 0, "seed", f"must be >= 0, got {config.seed}")
  return Settings(config=config, model=model, data=data, data_info=info, objective=objective,
                  num_pauses=num_pauses)


def model_shape(model: model_lib.ModelConfig) -> dict:
  """The fields that decide the parameter shapes (compared when resuming or fine-tuning)."""
  return {key: getattr(model, key) for key in ("vocab_size", "width", "num_layers", "num_heads",
                                               "mlp_hidden", "max_pauses", "pause_feedback")}


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
