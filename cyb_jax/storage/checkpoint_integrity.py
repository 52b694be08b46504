"""Which file of a saved orbax array tree is damaged, found without reading the arrays.

orbax stores a checkpoint's arrays in an OCDBT database (`<step>/state/`): a manifest, B-tree nodes, and
data files (`ocdbt.process_<i>/d/<hash>`) that the tree's leaves point into by (file, offset, length).
A truncated or missing data file makes TensorStore fail deep inside an asynchronous restore, with its
whole spec as the message and, around it, the background callbacks of the reads still in flight printing
`RuntimeError: Event loop is closed`. Walking the tree first names the file and avoids that restore.
"""

from __future__ import annotations

import os
from typing import Optional

MAX_NODES = 100_000  # a damaged tree must not loop forever


def _file_and_end(location: str, root: str) -> tuple[str, int]:
  """(absolute file, end offset) of an OCDBT location "kind:[base_path:]relative_path:offset:length"."""
  parts = location.split(":")
  offset, length = int(parts[-2]), int(parts[-1])
  relative = parts[-3]
  base = parts[-4] if len(parts) >= 5 else ""
  return os.path.join(root, base, relative), offset + length


def _damage(path: str, end: int) -> Optional[str]:
  if not os.path.isfile(path):
    return f"{path} is missing"
  size = os.path.getsize(path)
  if size < end:
    return f"{path} is truncated ({size} bytes; its data runs to byte {end})"
  return None


def damaged_file(state_dir: str) -> Optional[str]:
  """A one-line description of the first missing or truncated file of the OCDBT array tree in
  `state_dir` (e.g. "/run/checkpoints/12/state/ocdbt.process_0/d/1fc... is truncated (10 bytes; its data
  runs to byte 16502)"), or None if every file the tree points into is long
  enough (or the tree is not OCDBT, or tensorstore cannot tell: the restore then speaks for itself)."""
  problem, ends = _walk(state_dir)
  if problem:
    return problem
  for path in sorted(ends):
    problem = _damage(path, ends[path])
    if problem:
      return problem
  return None


def referenced_files(state_dir: str) -> dict[str, int]:
  """{file: the furthest byte the OCDBT tree in `state_dir` points to in it}, over its B-tree nodes and the
  data files holding its larger values: the files a restore reads (a `d/` directory may also hold files no
  version refers to). Empty when the tree is not OCDBT or is damaged."""
  problem, ends = _walk(state_dir)
  return {} if problem else ends


def _walk(state_dir: str) -> tuple[Optional[str], dict[str, int]]:
  """(the first damaged B-tree node's description or None, {node or value file: furthest byte} seen)."""
  try:
    import tensorstore as ts  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, {}
  root = os.path.abspath(state_dir)
  if not os.path.isfile(os.path.join(root, "manifest.ocdbt")):
    return None, {}
  try:
    base = ts.KvStore.open(f"file://{root}/").result()
    manifest = ts.ocdbt.dump(base).result()
  except Exception:  # pylint: disable=broad-except  (a manifest that does not parse)
    return f"{os.path.join(root, 'manifest.ocdbt')} does not parse", {}
  pending = [version["root"]["location"] for version in manifest.get("versions", [])
             if version.get("root", {}).get("location")]
  ends: dict[str, int] = {}  # file -> the furthest byte the tree points to in it
  seen = 0
  while pending and seen < MAX_NODES:
    location = pending.pop()
    seen += 1
    path, end = _file_and_end(location, root)
    problem = _damage(path, end)
    if problem:
      return problem, ends
    ends[path] = max(end, ends.get(path, 0))
    try:
      node = ts.ocdbt.dump(base, location).result()
    except Exception:  # pylint: disable=broad-except
      return f"{path} does not parse (B-tree node at {location.split(':', 1)[1]})", ends
    for entry in node.get("entries", []):
      if "indirect_value" in entry:
        path, end = _file_and_end(entry["indirect_value"], root)
        ends[path] = max(end, ends.get(path, 0))
      elif "location" in entry:  # an interior node's child
        pending.append(entry["location"])
  return None, ends
