"""A fingerprint of a run's local text data, saved with each checkpoint and compared on resume.

A resumed run continues from a saved data position (window w of an epoch's order); that position only
means the same thing if the data is the same. The config check on resume sees settings, not files, so a
text file edited (or a document added to a folder) under an unchanged `data.text_path` would silently
shift every window and could move eval text into training. The fingerprint is, per file read (the text
file, the .jsonl file, or each *.txt of a folder), its size in bytes and the SHA-256 of its content:
hashing runs at about 1 GB/s, far cheaper than the tokenisation the run does anyway, and, unlike a
modification time, it survives copying the data to another machine. Synthetic and TFDS sources have none.

A change is refused, not warned about: the run could not go on meaningfully (its saved position indexes
windows of the old text, and with documents a changed file can move a document between the splits), and
a warning scrolls past in a long log while the resumed curves look continuous. The way forward is
explicit: restore the data, or start a new work directory from the old weights (`config.init_from`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

from cyb_jax.data import pipeline as data_pipeline
from cyb_jax.data import text as text_lib

_CHUNK = 1 << 20


def _file_fingerprint(path: str) -> dict:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for chunk in iter(lambda: handle.read(_CHUNK), b""):
      digest.update(chunk)
  return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def data_fingerprint(config_like) -> Optional[dict]:
  """{"path": text_path, "files": {name: {"bytes": int, "sha256": hex str}}} of a text-file source (names
  relative to a folder, or the file's own name), or None for other sources. JSON-able."""
  config = data_pipeline.DataConfig.from_any(config_like)
  if config.name != data_pipeline.TEXT_FILE or not config.text_path:
    return None
  path = config.text_path
  if os.path.isdir(path):
    names = sorted(name for name in os.listdir(path) if name.endswith(text_lib.FOLDER_SUFFIX)
                   and os.path.isfile(os.path.join(path, name)))
    files = {name: _file_fingerprint(os.path.join(path, name)) for name in names}
  else:
    files = {os.path.basename(path): _file_fingerprint(path)}
  return {"path": path, "files": files}


def change_message(saved: Optional[dict], current: Optional[dict], step: int, workdir: str) -> Optional[str]:
  """One line naming the first file whose content differs between the checkpoint's fingerprint (`saved`)
  and this run's, and how; None when they agree or either is missing (checkpoints from before
  fingerprints, sources without one)."""
  if not saved or not current:
    return None
  before, now = saved.get("files", {}), current.get("files", {})
  root = current.get("path", "")
  where = (lambda name: os.path.join(root, name)) if os.path.isdir(root) else (lambda name: root)
  what = None
  for name in sorted(set(before) | set(now)):
    old, new = before.get(name), now.get(name)
    if old == new:
      continue
    if old is None:
      what = f"{where(name)} is new"
    elif new is None:
      what = f"{where(name)} is gone"
    elif old["bytes"] != new["bytes"]:
      what = f"{where(name)} is {new['bytes']} bytes, {old['bytes']} when checkpointed"
    else:
      what = (f"{where(name)} has other content of the same size (sha256 {new['sha256'][:12]}..., "
              f"{old['sha256'][:12]}... when checkpointed)")
    break
  if what is None:
    return None
  return (f"the data changed under the run: {what} (checkpoint step {step} in {workdir!r}); its saved data "
          "position would point into other text: restore the data, or train on the new data in a new --workdir "
          "(config.init_from=the old one keeps the weights)")
