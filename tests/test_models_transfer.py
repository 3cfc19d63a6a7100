"""Transfer learning (freezing, partitions, transplants, digits transfer) and dataset bias."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jdl import data, nn
from jdl import train as jt
from jdl.models import bias, transfer

MODEL = nn.serial(nn.serial(nn.dense(8), nn.activation("tanh"), nn.dense(6),
                            nn.activation("tanh")), nn.dense(3))
PARAMS = MODEL.init(jax.random.key(0), (-1, 13))[1]
WINE = data.load("wine", dtype=jnp.float64)
SCALE = data.fit_standardize(WINE.x_train)
TRAIN = (SCALE(WINE.x_train), WINE.y_train)


def ce(params, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(MODEL.apply(params, x)[0], y).mean()


# --- transfer ----------------------------------------------------------------


def test_param_paths_and_labels():
    paths = transfer.param_paths(PARAMS)
    assert paths == ["0_serial/0_dense/b", "0_serial/0_dense/w", "0_serial/2_dense/b",
                     "0_serial/2_dense/w", "1_dense/b", "1_dense/w"]
    labels = transfer.label_params(PARAMS, {"0_serial/0_dense": "first", "*/w": "kernels"},
                                   default="rest")
    assert jax.tree.leaves(labels) == ["first", "first", "rest", "kernels", "rest", "kernels"]
    # a folder pattern selects its subtree, a glob matches whole paths only
    labels = transfer.label_params(PARAMS, [("0_serial", "body"), ("1_*/b", "bias")])
    assert jax.tree.leaves(labels) == ["body"] * 4 + ["bias", "train"]


@pytest.mark.parametrize("call", [
    lambda: transfer.freeze(optax.sgd(0.1), PARAMS, ["0_serial", "2_dense", "head/*"]),
    lambda: transfer.label_params(PARAMS, {"body": "x"}),
    lambda: transfer.partition({"train": optax.sgd(0.1)}, PARAMS, {"0_dense": "train"}),
    lambda: transfer.transplant(PARAMS, PARAMS, "nothing"),
])
def test_unknown_parameter_names_list_the_valid_paths(call):
    with pytest.raises(ValueError, match=r"match no parameter; valid paths are \[.*"
                                         r"'0_serial/0_dense/b'.*'1_dense/w'\]"):
        call()


def test_freeze_reports_the_unknown_patterns_only():
    with pytest.raises(ValueError, match=r"freeze: patterns \['2_dense', 'head/\*'\]"):
        transfer.freeze(optax.sgd(0.1), PARAMS, ["0_serial", "2_dense", "head/*"])
    with pytest.raises(ValueError, match="labels \\['body'\\] have no transformation"):
        transfer.partition({"train": optax.sgd(0.1)}, PARAMS, {"0_serial": "body"})


@pytest.mark.parametrize("frozen", ["0_serial", ["1_dense"], ["0_serial/0_dense", "*/b"]])
def test_frozen_params_stay_bit_identical_after_training(frozen):
    optimizer = transfer.freeze(optax.adamw(0.05, weight_decay=0.1), PARAMS, frozen)
    trained = jt.fit(ce, PARAMS, optimizer, TRAIN, epochs=4, batch_size=16,
                     key=jax.random.key(1), quiet=True).params
    labels = transfer.label_params(PARAMS, [(p, "frozen") for p in np.atleast_1d(frozen)])
    for label, before, after in zip(jax.tree.leaves(labels), jax.tree.leaves(PARAMS),
                                    jax.tree.leaves(trained)):
        if label == "frozen":
            np.testing.assert_array_equal(after, before)
        else:
            assert not np.allclose(after, before)
    assert float(ce(trained, TRAIN)) < float(ce(PARAMS, TRAIN))


def test_partition_gives_each_part_its_own_rate():
    tx = transfer.partition({"body": optax.sgd(0.0), "train": optax.sgd(0.5)}, PARAMS,
                            {"0_serial": "body"})
    step = jax.jit(jt.train_step(ce, tx))
    params, _, _ = step(PARAMS, tx.init(PARAMS), TRAIN)
    plain = jax.jit(jt.train_step(ce, optax.sgd(0.5)))(PARAMS, optax.sgd(0.5).init(PARAMS),
                                                        TRAIN)[0]
    np.testing.assert_array_equal(params["0_serial"]["0_dense"]["w"],
                                  PARAMS["0_serial"]["0_dense"]["w"])
    np.testing.assert_allclose(params["1_dense"]["w"], plain["1_dense"]["w"], rtol=1e-12)


def test_transplant_copies_the_selected_part():
    other = MODEL.init(jax.random.key(5), (-1, 13))[1]
    mixed = transfer.transplant(PARAMS, other, "0_serial")
    jax.tree.map(np.testing.assert_array_equal, mixed["0_serial"], PARAMS["0_serial"])
    jax.tree.map(np.testing.assert_array_equal, mixed["1_dense"], other["1_dense"])
    wide = nn.serial(nn.serial(nn.dense(8), nn.activation("tanh"), nn.dense(6),
                               nn.activation("tanh")), nn.dense(5))
    head = wide.init(jax.random.key(6), (-1, 13))[1]
    with pytest.raises(ValueError, match=r"transplant: '1_dense/b' has shape \(5,\) in target, "
                                         r"\(3,\) in source"):
        transfer.transplant(PARAMS, head, "1_dense")


def test_select_classes_relabels_and_draws_few_shots():
    y = jnp.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    x = jnp.arange(11.0)[:, None]
    xs, ys = transfer.select_classes(x, y, [5, 3])
    np.testing.assert_array_equal(xs[:, 0], [0, 4, 8, 9, 10])
    np.testing.assert_array_equal(ys, [1, 0, 0, 1, 0])
    xs, ys = transfer.select_classes(x, y, [5, 3], per_class=2, key=jax.random.key(0))
    np.testing.assert_array_equal(ys, [0, 0, 1, 1])
    assert set(np.asarray(xs[:2, 0])) <= {4, 8, 10} and set(np.asarray(xs[2:, 0])) == {0, 9}
    with pytest.raises(ValueError, match="class 1 has 2 examples, fewer than per_class=3"):
        transfer.select_classes(x, y, [1], per_class=3)


def test_digits_transfer_keeps_the_frozen_body():
    result = transfer.digits_transfer(key=jax.random.key(0), shots=5, pretrain_epochs=10,
                                      finetune_epochs=40)
    jax.tree.map(np.testing.assert_array_equal, result.params["0_serial"],
                 result.pretrained["0_serial"])
    assert result.source_accuracy > 0.95
    # far above chance (0.2) on five new classes from 25 examples, both ways
    assert result.transfer_accuracy > 0.5 and result.scratch_accuracy > 0.5
    with pytest.raises(ValueError, match="disjoint classes"):
        transfer.digits_transfer(key=jax.random.key(0), source_classes=(0, 1),
                                 target_classes=(1, 2))


# --- dataset bias ------------------------------------------------------------


def test_corner_patch_and_column():
    mask = bias.corner_patch_mask((8, 8, 1), size=2, corner="bottom_right")
    assert mask.shape == (8, 8, 1) and int(mask.sum()) == 4 and bool(mask[7, 7, 0])
    assert not bool(mask[0, 0, 0])
    x = jnp.zeros((400, 3))
    y = jnp.arange(400) % 4
    x_col, col_mask = bias.spurious_column(x, y, target_class=2, p_target=0.9, p_other=0.1,
                                           key=jax.random.key(0))
    assert x_col.shape == (400, 4) and col_mask.tolist() == [False, False, False, True]
    share = [float(x_col[y == c, 3].mean()) for c in range(4)]
    assert share[2] > 0.75 and max(share[:2] + share[3:]) < 0.25
    with pytest.raises(ValueError, match="corner in"):
        bias.corner_patch_mask((8, 8), corner="middle")
    with pytest.raises(ValueError, match="mask of one example's shape"):
        bias.plant_feature(jnp.zeros((4, 8, 8, 1)), jnp.zeros(4), mask[..., 0], target_class=0,
                           key=jax.random.key(0))
    with pytest.raises(ValueError, match="p_other in \\[0, 1\\]"):
        bias.plant_feature(jnp.zeros((4, 8, 8, 1)), jnp.zeros(4), mask, target_class=0,
                           key=jax.random.key(0), p_other=1.5)


def test_plant_remove_and_add_to_all():
    x = jax.random.uniform(jax.random.key(0), (300, 8, 8, 1), jnp.float32, 0.0, 0.5)
    y = jnp.arange(300) % 3
    mask = bias.corner_patch_mask((8, 8, 1))
    planted = bias.plant_feature(x, y, mask, target_class=1, key=jax.random.key(1),
                                 p_target=1.0, p_other=0.0)
    assert planted.x.dtype == jnp.float32
    np.testing.assert_array_equal(planted.planted, y == 1)
    assert bool(jnp.all(planted.x[y == 1][:, :2, :2] == 1.0))
    np.testing.assert_array_equal(planted.x[y != 1], x[y != 1])
    np.testing.assert_array_equal(planted.x[:, 2:], x[:, 2:])  # only the patch changes
    cropped = bias.remove_feature(planted.x, mask)
    assert bool(jnp.all(cropped[:, :2, :2] == 0.0))
    np.testing.assert_array_equal(cropped[:, 2:], x[:, 2:])
    noisy = bias.remove_feature(planted.x, mask, fill="noise", key=jax.random.key(2))
    patch = noisy[:, :2, :2]
    assert 0.0 <= float(patch.min()) and float(patch.max()) < 1.0 and float(patch.std()) > 0.2
    everywhere = bias.add_to_all_classes(x, mask, key=jax.random.key(3), rate=0.5)
    share = [float(jnp.mean(everywhere[y == c, 0, 0, 0] == 1.0)) for c in range(3)]
    assert all(0.35 < s < 0.65 for s in share)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        bias.remove_feature(x, mask, fill="noise")


def test_input_gradient_penalty_value_and_gradient():
    model = nn.serial(nn.dense(4), nn.activation("tanh"), nn.dense(3))
    params = model.init(jax.random.key(0), (-1, 5))[1]
    x = jax.random.normal(jax.random.key(1), (6, 5))
    y = jnp.arange(6) % 3
    mask = jnp.array([True, False, False, True, False])

    def loss(p, batch):
        xb, yb = batch
        logits = model.apply(p, xb)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    penalised = jax.jit(bias.input_gradient_penalty(loss, mask, 2.0))
    one = jax.jit(jax.grad(lambda xi, yi: loss(params, (xi[None], yi[None]))))
    rows = [np.asarray(one(x[i], y[i])) for i in range(6)]
    expected = loss(params, (x, y)) + 2.0 * np.mean([np.sum(r[mask] ** 2) for r in rows])
    np.testing.assert_allclose(penalised(params, (x, y)), expected, rtol=1e-12)
    check_grads(lambda p: penalised(p, (x, y)), (params,), order=1, modes=["rev"])
    with pytest.raises(ValueError, match="rate >= 0"):
        bias.input_gradient_penalty(loss, mask, -1.0)


DIGITS = data.load("digits", dtype=jnp.float32)
PATCH = bias.corner_patch_mask((8, 8), size=2).reshape(64)
MLP = nn.serial(nn.dense(32), nn.activation("relu"), nn.dense(10))
OPTIMIZER = optax.adam(0.01)


def mlp_loss(params, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(MLP.apply(params, x)[0], y).mean()


def test_planted_patch_is_picked_up_and_remedies_reduce_the_reliance():
    def plant(x, y, key):
        return bias.plant_feature(x, y, PATCH, target_class=3, key=key).x

    x_train = plant(DIGITS.x_train, DIGITS.y_train, jax.random.key(1))
    x_with = plant(DIGITS.x_test, DIGITS.y_test, jax.random.key(2))
    x_without = DIGITS.x_test  # the patch removed at test time
    start = MLP.init(jax.random.key(0), (-1, 64), jnp.float32)[1]

    def reliance_after(loss, x):
        params = jt.fit(loss, start, OPTIMIZER, (x, DIGITS.y_train), epochs=15, batch_size=64,
                        key=jax.random.key(1), quiet=True).params
        predict = lambda x: MLP.apply(params, x)[0]  # noqa: E731
        accuracy = float(jnp.mean(predict(x_with).argmax(-1) == DIGITS.y_test))
        return float(bias.reliance(predict, x_with, x_without, DIGITS.y_test)), accuracy

    biased, biased_accuracy = reliance_after(mlp_loss, x_train)
    # class 3 is about a tenth of the test set: without its patch most of it is lost
    assert biased > 0.05 and biased_accuracy > 0.93
    everywhere = bias.add_to_all_classes(x_train, PATCH, key=jax.random.key(4))
    added, added_accuracy = reliance_after(mlp_loss, everywhere)
    penalised, penalised_accuracy = reliance_after(
        bias.input_gradient_penalty(mlp_loss, PATCH, 10.0), x_train)
    for remedied, accuracy in ((added, added_accuracy), (penalised, penalised_accuracy)):
        assert abs(remedied) < 0.3 * biased
        assert accuracy > 0.93
