"""LM1B (One Billion Word), byte-level, through `tfds.data_source` (no TensorFlow), for TPU VMs / GPUs.

Prepare the data once (this needs TensorFlow and a download, so do it on a machine with internet):
  pip install tensorflow tensorflow-datasets
  python -c "import tensorflow_datasets as tfds; tfds.builder('lm1b', data_dir='$DATA', \
      file_format='array_record').download_and_prepare()"
then train (no TensorFlow needed at training time):
  python train.py --config=configs/lm1b.py --config.data.tfds_data_dir=$DATA --workdir=$WORKDIR

Documents are packed into rows of seq_len bytes; loss never crosses from one document into the next.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "tfds"
  config.data.tfds_name = "lm1b"
  config.data.tfds_text_field = "text"
  config.data.seq_len = 256
  config.data.task = {}
  config.data.read_threads = 8
  config.model.width = 512
  config.model.num_layers = 8
  config.model.num_heads = 8
  config.model.mlp_hidden = 2048
  config.model.dtype = "bfloat16"
  config.model.remat = True
  config.num_pauses = 2
  config.train.batch_size = 256
  config.train.num_steps = 100_000
  config.train.log_every = 100
  config.train.eval_every = 5000
  config.train.eval_batches = 50
  config.train.checkpoint_every = 2000
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 2000
  return config
