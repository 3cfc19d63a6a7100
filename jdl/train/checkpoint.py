"""Atomic, checksummed checkpoints of any pytree (params, optimiser state, keys).

A checkpoint is one file: an 8-byte magic, the SHA-256 of the payload, and
the payload, a msgpack document (``flax.serialization``) holding every leaf's
raw bytes, its tree path, and free-form metadata. Writing goes to a temporary
file in the same folder, is flushed to disk, then renamed over the old file
(``os.replace`` is atomic on POSIX), so a run killed at any moment leaves
either the previous checkpoint or the new one, never a torn file. PRNG keys
are stored as their raw key data and rewrapped with the target's
implementation. Loading checks the checksum and that every leaf matches the
target's path, shape and dtype; restored arrays are bit-identical.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

MAGIC = b"JDLCKPT1"
FILENAME = "checkpoint.msgpack"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the run it should resume."""


def checkpoint_path(directory: str | os.PathLike) -> Path:
    """The checkpoint file of a run folder: ``directory / "checkpoint.msgpack"``."""
    return Path(directory) / FILENAME


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _flatten(tree) -> tuple[list[str], list[np.ndarray]]:
    with_paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(path) for path, _ in with_paths]
    leaves = [np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
              for _, leaf in with_paths]
    return paths, leaves


def save_checkpoint(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> Path:
    """Write ``tree`` (and ``metadata``) to ``path`` atomically.

    Args:
      path: the file to write; its folder is created if needed.
      tree: any pytree of arrays (typed PRNG keys included).
      metadata: a dict of msgpack-able values (numbers, strings, lists,
        numpy arrays) stored beside the tree.

    Returns:
      The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    paths, leaves = _flatten(jax.device_get(tree))
    payload = serialization.msgpack_serialize({
        "paths": paths,
        "leaves": {str(i): leaf for i, leaf in enumerate(leaves)},
        "metadata": metadata or {},
    })
    blob = MAGIC + hashlib.sha256(payload).digest() + payload
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _read_payload(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"load_checkpoint: no checkpoint at {str(path)!r}")
    blob = path.read_bytes()
    header = len(MAGIC) + 32
    if len(blob) < header or blob[:len(MAGIC)] != MAGIC:
        raise CheckpointError(
            f"load_checkpoint: {str(path)!r} is not a jdl checkpoint (bad header, "
            f"{len(blob)} bytes)")
    digest, payload = blob[len(MAGIC):header], blob[header:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"load_checkpoint: {str(path)!r} is corrupt (checksum mismatch)")
    try:
        return serialization.msgpack_restore(payload)
    except Exception as err:  # msgpack raises several types for bad bytes
        raise CheckpointError(f"load_checkpoint: {str(path)!r} cannot be decoded: {err}") from err


def load_checkpoint(path: str | os.PathLike, target: Any) -> tuple[Any, dict]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``target``.

    Args:
      path: the checkpoint file.
      target: a pytree with the same structure, shapes and dtypes as the
        saved one (e.g. a freshly initialised train state); its leaves' values
        are not used.

    Returns:
      ``(tree, metadata)``: the restored pytree (``jax.Array`` leaves) and the
      metadata dict.

    Raises:
      CheckpointError: if the file is missing, corrupt, or does not match
        ``target`` (the message names the first mismatching leaf).
    """
    path = Path(path)
    doc = _read_payload(path)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(target)
    saved_paths = list(doc["paths"])
    expected_paths = [jax.tree_util.keystr(p) for p, _ in with_paths]
    if saved_paths != expected_paths:
        missing = sorted(set(expected_paths) ^ set(saved_paths))[:3]
        raise CheckpointError(
            f"load_checkpoint: {str(path)!r} holds a different tree: {len(saved_paths)} leaves "
            f"against {len(expected_paths)} expected; first differing paths {missing}")
    leaves = []
    for i, (_, ref) in enumerate(with_paths):
        saved = np.asarray(doc["leaves"][str(i)])
        ref_value = jax.random.key_data(ref) if _is_key(ref) else jnp.asarray(ref)
        if saved.shape != ref_value.shape or saved.dtype != ref_value.dtype:
            raise CheckpointError(
                f"load_checkpoint: leaf {expected_paths[i]} of {str(path)!r} has shape "
                f"{saved.shape} and dtype {saved.dtype}; expected {ref_value.shape} "
                f"{ref_value.dtype}")
        value = jnp.asarray(saved)
        if _is_key(ref):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(ref))
        leaves.append(value)
    return jax.tree.unflatten(treedef, leaves), dict(doc["metadata"])
