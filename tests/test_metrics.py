"""jdl.metrics: accuracy and expected calibration error against direct computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import metrics


def test_accuracy_counts_argmax_hits_under_jit():
    scores = jnp.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2], [0.0, 5.0]])
    labels = jnp.array([1, 0, 1, 1])
    assert float(jax.jit(metrics.accuracy)(scores, labels)) == 0.75
    with pytest.raises(ValueError, match="accuracy: expected scores"):
        metrics.accuracy(scores, labels[:3])


def test_calibration_error_matches_a_loop_over_bins():
    key_p, key_y = jax.random.split(jax.random.key(0))
    probs = jax.nn.softmax(3 * jax.random.normal(key_p, (500, 4)))
    labels = jax.random.randint(key_y, (500,), 0, 4)
    ece, curve = metrics.expected_calibration_error(probs, labels, bins=10)
    p, y = np.asarray(probs), np.asarray(labels)
    conf, correct = p.max(1), (p.argmax(1) == y)
    expected = 0.0
    for b in range(10):
        sel = (conf >= b / 10) & ((conf < (b + 1) / 10) | (b == 9))
        if sel.any():
            expected += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
            np.testing.assert_allclose(curve[b], [conf[sel].mean(), correct[sel].mean(),
                                                  sel.sum()], rtol=1e-10)
        else:
            assert np.isnan(curve[b, 0]) and curve[b, 2] == 0
    np.testing.assert_allclose(ece, expected, rtol=1e-10)


def test_perfectly_calibrated_predictions_have_zero_error():
    probs = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    ece, _ = metrics.expected_calibration_error(probs, jnp.array([0, 1]))
    assert float(ece) == 0.0
