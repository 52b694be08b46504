"""Fine-tune a pretrained no-pause model with pauses (the published setting).

First pretrain a plain LM (no <dk>, no pause parameters):
  python train.py --config=configs/ce.py --config.model.max_pauses=0 --workdir=runs/pretrain
then fine-tune it with a CYB objective; its parameters are extended with fresh <dk> and pause parameters,
so step 0 starts out exactly as the pretrained model:
  python train.py --config=configs/finetune.py --config.init_from=runs/pretrain --workdir=runs/finetune
The data (and so the vocabulary) and the model shape must match the pretrained run's.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.init_from = "runs/pretrain"
  config.objective.name = "cyb_ap"
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 50
  return config
