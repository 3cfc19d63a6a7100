"""Checkpoints: bit-identical round trips, clear errors, resume equals an uninterrupted run,
also after SIGKILL of a training process."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import nn
from jdl import train as jt


def _tree():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3, jnp.float32)}
    opt_state = optax.adam(0.1).init(params)
    return {"params": params, "opt": opt_state, "key": jax.random.key(7),
            "raw_key": jax.random.PRNGKey(3), "step": jnp.array(5, jnp.int32)}


def _assert_bit_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_bit_identical(tmp_path):
    tree = _tree()
    path = jt.save_checkpoint(tmp_path / "sub" / "c.msgpack", tree, {"epoch": 3, "note": "x"})
    restored, meta = jt.load_checkpoint(path, _tree())
    _assert_bit_equal(restored, tree)
    assert meta == {"epoch": 3, "note": "x"}
    assert jnp.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
    assert not list(path.parent.glob("*.tmp"))


def test_missing_corrupt_and_mismatched_checkpoints_raise(tmp_path):
    with pytest.raises(jt.CheckpointError, match="no checkpoint"):
        jt.load_checkpoint(tmp_path / "none.msgpack", _tree())
    path = jt.save_checkpoint(tmp_path / "c.msgpack", _tree())
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(jt.CheckpointError, match="corrupt"):
        jt.load_checkpoint(path, _tree())
    path.write_bytes(bytes(blob[:20]))
    with pytest.raises(jt.CheckpointError, match="not a jdl checkpoint"):
        jt.load_checkpoint(path, _tree())
    jt.save_checkpoint(path, _tree())
    other = _tree()
    other["params"]["w"] = jnp.zeros((3, 3))
    with pytest.raises(jt.CheckpointError, match=r"leaf \['params'\]\['w'\].*shape \(2, 3\)"):
        jt.load_checkpoint(path, other)
    del other["step"]
    with pytest.raises(jt.CheckpointError, match="different tree"):
        jt.load_checkpoint(path, other)


def test_a_torn_temporary_file_does_not_matter(tmp_path):
    path = jt.save_checkpoint(tmp_path / "c.msgpack", _tree())
    (tmp_path / ".c.msgpack.abc.tmp").write_bytes(b"JDLCKPT1 half-written")
    restored, _ = jt.load_checkpoint(path, _tree())
    _assert_bit_equal(restored, _tree())


X = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
Y = (X @ np.arange(1.0, 5.0)[:, None]).astype(np.float32)
MODEL = nn.serial(nn.dense(8), nn.activation("tanh"), nn.dropout(0.2), nn.dense(1))
LOSS = jt.model_loss(MODEL, lambda out, t: jnp.mean((out - t) ** 2))
OPTIMIZER = jt.adam(1e-2)


def _fit(epochs, directory=None, resume=False, batch_size=16):
    _, params, state = MODEL.init(jax.random.key(0), (-1, 4), jnp.float32)
    return jt.fit(LOSS, params, OPTIMIZER, (X, Y), epochs=epochs, batch_size=batch_size,
                  key=jax.random.key(1), model_state=state, val_data=(X, Y),
                  early_stopping=jt.EarlyStopping(50), checkpoint_dir=directory,
                  checkpoint_every=2, resume=resume, epochs_per_call=4, quiet=True)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight = _fit(7)
    first = _fit(3, tmp_path)
    resumed = _fit(7, tmp_path, resume=True)
    assert int(first.state.epoch) == 3
    _assert_bit_equal(resumed.state, straight.state)
    _assert_bit_equal(resumed.params, straight.params)
    for name in ("loss", "val_loss"):
        np.testing.assert_array_equal(resumed.history[name], straight.history[name])
    np.testing.assert_array_equal(resumed.history["epoch"], np.arange(1, 8))
    # resuming a finished run returns it unchanged
    again = _fit(7, tmp_path, resume=True)
    _assert_bit_equal(again.state, straight.state)


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(jt.CheckpointError, match="no checkpoint"):
        _fit(2, tmp_path, resume=True)
    _fit(2, tmp_path)
    with pytest.raises(jt.CheckpointError, match="batch_size=16; this run has batch_size=20"):
        _fit(4, tmp_path, resume=True, batch_size=20)
    path = jt.checkpoint_path(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(jt.CheckpointError, match="corrupt"):
        _fit(4, tmp_path, resume=True)
    # a fresh start is explicit: resume=False overwrites the broken file
    fresh = _fit(2, tmp_path)
    assert int(_fit(2, tmp_path, resume=True).state.epoch) == int(fresh.state.epoch) == 2


SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    from jdl import nn, train as jt

    directory, out, resume, pause = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x @ np.ones((4, 1))).astype(np.float32)
    model = nn.serial(nn.dense(8), nn.activation("tanh"), nn.dropout(0.2), nn.dense(1))
    _, params, state = model.init(jax.random.key(0), (-1, 4), jnp.float32)
    loss = jt.model_loss(model, lambda o, t: jnp.mean((o - t) ** 2))

    def report(epoch, record):
        print(epoch, flush=True)
        time.sleep(pause)

    result = jt.fit(loss, params, jt.adam(1e-2), (x, y), epochs=12, batch_size=16,
                    key=jax.random.key(1), model_state=state, checkpoint_dir=directory,
                    checkpoint_every=2, resume=resume, epochs_per_call=1, callback=report,
                    quiet=True)
    leaves = jax.tree.leaves((result.params, result.opt_state, result.model_state))
    np.savez(out, loss=result.history["loss"], *[np.asarray(leaf) for leaf in leaves])
""")


def test_kill_and_resume_is_bit_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)

    def start(directory, out, resume, pause):
        return subprocess.Popen(
            [sys.executable, str(script), str(directory), str(out), resume, str(pause)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    straight = start(tmp_path / "straight", tmp_path / "straight.npz", "0", 0)
    victim = start(tmp_path / "killed", tmp_path / "unused.npz", "0", 0.3)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = victim.stdout.readline()
        assert line, victim.stderr.read()
        seen.append(int(line))
        if seen[-1] == 5:  # the epoch-4 checkpoint has been written (or is being written)
            break
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert jt.checkpoint_path(tmp_path / "killed").exists()
    assert not (tmp_path / "unused.npz").exists()

    resumed = start(tmp_path / "killed", tmp_path / "resumed.npz", "1", 0)
    for proc in (straight, resumed):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 5
    for name in a.files:
        assert np.array_equal(a[name], b[name]), name
    assert a["loss"].shape == (12,)
