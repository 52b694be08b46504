"""Byte-level language modelling on a local text file (tinyshakespeare by default).

  python train.py --config=configs/shakespeare.py --config.data.text_path=../shared/data/tinyshakespeare.txt \
      --workdir=runs/shakespeare

The last 10% of the file is the eval split. Any UTF-8 text file works.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "text_file"
  config.data.text_path = "../shared/data/tinyshakespeare.txt"
  config.data.seq_len = 128
  config.data.task = {}
  config.model.width = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.mlp_hidden = 512
  config.train.num_steps = 3000
  config.train.eval_every = 500
  config.train.eval_batches = 16
  return config
