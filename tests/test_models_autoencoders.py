"""jdl.models auto-encoders: the notes' encode/decode, sparse and denoising losses, the
sparsity check, a U-Net, anomaly scores with AUROC on held-out digit classes, rotations."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jdl import data, losses, models, nn
from jdl import train as jt

DIGITS = data.load("digits", images=True, key=jax.random.key(0))


@pytest.mark.parametrize("name,layer,shape", [
    ("reshape", nn.reshape((2, 3)), (2, 6)),
    ("upsample", nn.upsample((2, 3)), (2, 3, 2, 2)),
    ("dense_autoencoder", models.dense_autoencoder((4, 4, 1), 3, activation="tanh"),
     (2, 4, 4, 1)),
    ("conv_autoencoder", models.conv_autoencoder((2,), image_channels=2), (2, 2, 2, 2)),
    ("unet", models.unet((2, 3)), (2, 4, 4, 1)),
])
def test_layers_shapes_and_gradients(name, layer, shape):
    out_shape, params, state = layer.init(jax.random.key(0), (-1, *shape[1:]))
    # zero biases on zero (relu'd) maps sit exactly on relu's kink; move off it
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), max(len(leaves), 1))
    params = jax.tree.unflatten(tree, [w + 0.1 * jax.random.normal(k, w.shape)
                                       for w, k in zip(leaves, keys)])
    x = jax.random.uniform(jax.random.key(1), shape)
    f = jax.jit(lambda p, x: layer.apply(p, x)[0])
    y = f(params, x)
    assert y.shape == (shape[0], *out_shape[1:])
    check_grads(f, (params, x), order=1, modes=["rev"], eps=1e-6)


def test_upsample_is_nearest_neighbour():
    x = jnp.arange(6.0).reshape(1, 2, 3, 1)
    y, _ = nn.upsample(2).apply({}, x)
    expected = np.kron(np.asarray(x[0, :, :, 0]), np.ones((2, 2)))
    np.testing.assert_array_equal(y[0, :, :, 0], expected)


def test_dense_autoencoder_is_the_notes_encode_and_decode():
    model = models.dense_autoencoder((8, 8), 5)
    _, params, _ = model.init(jax.random.key(0), (-1, 8, 8))
    V, b = params["encoder"]["1_dense"]["w"], params["encoder"]["1_dense"]["b"]
    W, a = params["decoder"]["0_dense"]["w"], params["decoder"]["0_dense"]["b"]
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8))
    # the notes: z = max(0, x.reshape(N, -1) @ V + b); x_rec = (z @ W + a).reshape(N, d, d)
    z = np.maximum(0.0, np.asarray(x).reshape(3, -1) @ V + b)
    np.testing.assert_allclose(models.encode(model, params, x), z, rtol=1e-12)
    np.testing.assert_allclose(models.decode(model, params, z), (z @ W + a).reshape(3, 8, 8),
                               rtol=1e-12)
    np.testing.assert_allclose(model.apply(params, x)[0], (z @ W + a).reshape(3, 8, 8),
                               rtol=1e-12)


def test_unet_concatenates_skips_at_each_resolution():
    model = models.unet((3, 5, 7), image_channels=2)
    params = jax.eval_shape(lambda k: model.init(k, (-1, 8, 8, 2))[1], jax.random.key(0))
    assert model.names == ("down_0", "down_1", "down_2", "up_1", "up_0", "out")
    # up_i sees the upsampled coarser maps and the skip of level i, concatenated
    assert params["up_1"]["0_conv2d"]["w"].shape[2:] == (7 + 5, 5)
    assert params["up_0"]["0_conv2d"]["w"].shape[2:] == (5 + 3, 3)
    assert params["out"]["w"].shape == (1, 1, 3, 2)
    with pytest.raises(ValueError, match="unet: expected .* divisible by 4"):
        model.init(jax.random.key(0), (-1, 6, 6, 2))
    with pytest.raises(ValueError, match=r"unet: expected images \(batch, height, width, 2\)"):
        model.apply(params, jnp.ones((1, 8, 8, 1)))


def test_sparsity_is_the_fraction_of_zero_code_units():
    z = jnp.array([[0.0, 1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 3.0, 0.0, 0.0]])
    assert float(models.sparsity(z)) == pytest.approx(7 / 10, rel=1e-12)
    assert float(models.sparsity(z, tol=1.5)) == pytest.approx(8 / 10, rel=1e-12)
    assert models.sparsity(z).dtype == z.dtype
    # the notes' sparsitycheck divides the count of zeros by z.shape[0] (the batch): 3.5
    notes = z[z == 0].shape[0] / z.shape[0]
    assert notes == 3.5 == pytest.approx(float(models.sparsity(z)) * z.shape[1], rel=1e-12)
    with pytest.raises(ValueError, match="sparsity: expected tol >= 0"):
        models.sparsity(z, tol=-1.0)


def test_objectives_are_the_jdl_losses():
    model = models.dense_autoencoder((8, 8, 1), 6)
    _, params, _ = model.init(jax.random.key(0), (-1, 8, 8, 1))
    x = DIGITS.x_train[:16].astype(jnp.float64)
    x_rec, _ = model.apply(params, x)
    z = models.encode(model, params, x)
    np.testing.assert_allclose(models.reconstruction_objective(model)(params, x),
                               losses.reconstruction(x, x_rec), rtol=1e-12)
    np.testing.assert_allclose(models.reconstruction_objective(model, lam=0.5)(params, x),
                               losses.sparse_reconstruction(x, x_rec, z, 0.5), rtol=1e-12)
    key = jax.random.key(3)
    denoise = models.denoising_objective(model, noise=0.2)
    loss, _ = jax.jit(denoise.fn, static_argnums=4)(params, {}, x, key, True)
    np.testing.assert_allclose(
        loss, losses.denoising_loss(lambda p, x: model.apply(p, x)[0], params, x, key, 0.2),
        rtol=1e-12)
    assert loss > losses.reconstruction(x, x_rec)   # the noise costs something
    clean, _ = denoise(params, {}, x, None, False)   # evaluation: the clean input
    np.testing.assert_allclose(clean, losses.reconstruction(x, x_rec), rtol=1e-12)
    with pytest.raises(ValueError, match="reconstruction_objective: expected an autoencoder"):
        models.reconstruction_objective(models.unet((2, 3)), lam=0.1)


def _train(model, objective, x, epochs):
    _, params, _ = model.init(jax.random.key(0), (-1, *x.shape[1:]), jnp.float32)
    result = jt.fit(objective, params, optax.adam(1e-2), x, epochs=epochs, batch_size=32,
                    key=jax.random.key(1), model_state={}, quiet=True)
    return result.params


DENSE = models.dense_autoencoder((8, 8, 1), 16)


@pytest.fixture(scope="module")
def plain_params():
    """The dense auto-encoder trained on every digit class, no penalty, no augmentation."""
    return _train(DENSE, models.reconstruction_objective(DENSE), DIGITS.x_train, 15)


def test_sparse_penalty_gives_sparser_codes(plain_params):
    sparse = _train(DENSE, models.reconstruction_objective(DENSE, lam=0.5), DIGITS.x_train, 15)
    fractions = [float(models.sparsity(models.encode(DENSE, p, DIGITS.x_test)))
                 for p in (plain_params, sparse)]
    assert fractions[1] > fractions[0] + 0.1, fractions


def test_rotation_augmentation_makes_reconstruction_rotation_robust(plain_params):
    objective = models.reconstruction_objective(DENSE)
    rotated = _train(DENSE, models.rotation_objective(objective), DIGITS.x_train, 15)
    x = models.random_rotation(jax.random.key(9), DIGITS.x_test)
    errors = [float(objective(p, x)) for p in (plain_params, rotated)]
    assert errors[1] < 0.7 * errors[0], errors


def test_anomaly_score_separates_held_out_digit_classes():
    normal = DIGITS.y_train < 5
    params = _train(DENSE, models.reconstruction_objective(DENSE), DIGITS.x_train[normal], 30)
    x = DIGITS.x_test
    scores = jax.jit(lambda p, x: models.anomaly_score(x, DENSE.apply(p, x)[0]))(params, x)
    np.testing.assert_allclose(scores, jnp.sum((DENSE.apply(params, x)[0] - x) ** 2, (1, 2, 3)),
                               rtol=1e-5)
    value = float(models.auroc(scores, DIGITS.y_test >= 5))   # classes 5-9 never seen
    assert value > 0.75, value


def _brute_auroc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [3, 1000])   # many ties, almost none
def test_auroc_equals_the_pair_count(seed, levels):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 41)
    labels[:2] = (0, 1)
    scores = rng.integers(0, levels, 41) + 0.7 * labels * rng.integers(0, 2, 41)
    value = jax.jit(models.auroc)(scores, labels)
    np.testing.assert_allclose(value, _brute_auroc(scores, labels), rtol=1e-12)
    np.testing.assert_allclose(models.auroc(-scores, labels), 1 - value, rtol=1e-12)
    np.testing.assert_allclose(models.auroc(np.exp(scores / 10), labels), value, rtol=1e-12)


def test_auroc_bad_input():
    with pytest.raises(ValueError, match="auroc: expected both classes"):
        models.auroc(jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match="auroc: expected labels 0/1"):
        models.auroc(jnp.ones(3), jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"auroc: expected scores and labels of the same shape"):
        models.auroc(jnp.ones(3), jnp.array([0, 1]))


def test_rotate_quarter_turns_and_identity():
    images = jax.random.uniform(jax.random.key(0), (3, 6, 6, 2))
    rotate = jax.jit(models.rotate)
    np.testing.assert_allclose(rotate(images, jnp.zeros(3)), images, atol=1e-12)
    quarter = rotate(images, jnp.full(3, jnp.pi / 2))
    np.testing.assert_allclose(quarter, np.rot90(images, axes=(1, 2)), atol=1e-12)
    full = images
    for _ in range(4):
        full = rotate(full, jnp.full(3, jnp.pi / 2))
    np.testing.assert_allclose(full, images, atol=1e-12)
    # per-image angles, and a non-square image by a half turn
    mixed = rotate(images, jnp.array([0.0, jnp.pi / 2, jnp.pi]))
    np.testing.assert_allclose(mixed[2], images[2, ::-1, ::-1], atol=1e-12)
    wide = jax.random.uniform(jax.random.key(1), (1, 4, 7, 1))
    np.testing.assert_allclose(models.rotate(wide, jnp.pi), wide[:, ::-1, ::-1], atol=1e-12)
    assert models.rotate(images.astype(jnp.float32), 0.3).dtype == jnp.float32


def test_random_rotation_draws_angles_from_the_key():
    images = DIGITS.x_test[:6]
    key = jax.random.key(4)
    out = jax.jit(models.random_rotation, static_argnums=2)(key, images, 0.5)
    angles = jax.random.uniform(key, (6,), images.dtype, -0.5, 0.5)
    np.testing.assert_allclose(out, models.rotate(images, angles), atol=1e-6)
    assert np.abs(np.asarray(out) - np.asarray(images)).max() > 0.05
    np.testing.assert_allclose(models.random_rotation(key, images, 0.0), images, atol=1e-6)
    with pytest.raises(ValueError, match="rotate: expected images"):
        models.rotate(jnp.ones((8, 8)), 0.1)
    with pytest.raises(ValueError, match="rotate: expected angles of shape"):
        models.rotate(jnp.ones((2, 8, 8, 1)), jnp.ones(3))


def test_autoencoder_bad_input():
    with pytest.raises(ValueError, match="autoencoder: decoder output shape"):
        models.autoencoder(nn.reshape((4,)), nn.reshape((2, 2))).init(
            jax.random.key(0), (-1, 4))
    with pytest.raises(TypeError, match="autoencoder: expected a Layer for decoder"):
        models.autoencoder(nn.reshape((4,)), None)
    with pytest.raises(ValueError, match="reshape: expected examples of 4 elements"):
        nn.reshape((2, 2)).apply({}, jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="upsample: expected an input shape"):
        nn.upsample(2).apply({}, jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="encode: expected an autoencoder Layer"):
        models.encode(models.unet((2, 3)), {}, jnp.ones((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="denoising_objective: expected noise >= 0"):
        models.denoising_objective(models.unet((2, 3)), noise=-0.1)
