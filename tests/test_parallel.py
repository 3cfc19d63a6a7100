"""jdl.parallel: a data mesh over the four host devices of the test configuration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import parallel


@pytest.mark.devices(4)
def test_sharded_mean_equals_unsharded():
    mesh = parallel.data_mesh(4)
    x = jax.random.normal(jax.random.key(0), (16, 3))
    xs = parallel.shard_batch(x, mesh)
    assert len(xs.sharding.device_set) == 4
    w = parallel.replicate(jnp.ones(3), mesh)
    np.testing.assert_allclose(jax.jit(lambda x, w: (x @ w).mean())(xs, w), (x @ jnp.ones(3)).mean(),
                               rtol=1e-12)


@pytest.mark.devices(4)
def test_bad_input():
    with pytest.raises(ValueError, match="num_devices"):
        parallel.data_mesh(len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="divisible by 4"):
        parallel.shard_batch(jnp.ones((6, 2)), parallel.data_mesh(4))
