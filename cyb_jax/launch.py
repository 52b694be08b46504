"""`python -m cyb_jax.launch --num_processes=2 --devices_per_process=2 -- train.py ARGS...`: several local
processes of one script (see cyb_jax/parallel/launcher.py)."""

import sys

from cyb_jax.parallel import launcher

if __name__ == "__main__":
  sys.exit(launcher.main())
