"""Data-parallel fit on 4 host devices equals one-device fit to float tolerance."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import data, nn, parallel
from jdl import train as jt

MODEL = nn.serial(nn.dense(16), nn.activation("relu"), nn.dense(10))


def loss_fn(params, batch):
    x, y = batch
    logits, _ = MODEL.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.fixture(scope="module")
def digits():
    ds = data.load("digits", dtype=jnp.float64)
    return (ds.x_train[:400], ds.y_train[:400]), (ds.x_val[:100], ds.y_val[:100])


@pytest.mark.devices(4)
@pytest.mark.parametrize("drop_last", [True, False])
def test_sharded_equals_unsharded(digits, drop_last):
    assert len(jax.devices()) >= 4, "conftest provides 4 host devices"
    train, val = digits
    _, params, _ = MODEL.init(jax.random.key(0), (-1, 64))
    optimizer = optax.sgd(0.1, momentum=0.9)
    common = dict(epochs=3, batch_size=32, key=jax.random.key(1), val_data=val,
                  drop_last=drop_last, quiet=True)
    single = jt.fit(loss_fn, params, optimizer, train, **common)
    mesh = parallel.data_mesh(4)
    sharded = jt.fit(loss_fn, params, optimizer, train, mesh=mesh, **common)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                 sharded.params, single.params)
    np.testing.assert_allclose(sharded.history["loss"], single.history["loss"], rtol=1e-10)
    np.testing.assert_allclose(sharded.history["val_loss"], single.history["val_loss"],
                               rtol=1e-10)
    leaf = jax.tree.leaves(sharded.params)[0]
    assert len(leaf.sharding.device_set) == 4 and leaf.sharding.is_fully_replicated


@pytest.mark.devices(4)
def test_batch_size_must_divide_over_devices(digits):
    train, _ = digits
    _, params, _ = MODEL.init(jax.random.key(0), (-1, 64))
    with pytest.raises(ValueError, match="divisible by the 4 devices"):
        jt.fit(loss_fn, params, optax.sgd(0.1), train, epochs=1, batch_size=30,
               key=jax.random.key(0), mesh=parallel.data_mesh(4), quiet=True)
