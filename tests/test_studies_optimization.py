"""Optimization studies: each runs in its tiny configuration; verdicts follow the numbers.

Every study is run once in tiny mode with its default case and once with a case
where the claim must come out differently (the verdict flips), except where a
decision helper is tested directly on constructed input.
"""

import itertools
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import data, studies
from jdl import train as jt
from jdl.studies import optimization as opt
from jdl.studies.registry import CAVEAT, FAILS, HOLDS, UNTESTABLE
from study_checks import well_formed

IDS = ["opt.symmetry", "opt.zero-init", "opt.init-scale", "opt.width-underfit", "opt.model-size",
       "opt.depth-resnet", "opt.restarts", "opt.lr-decay-escape", "opt.momentum-effective-lr",
       "opt.sgd-phases", "opt.robbins-monro", "opt.batch-variance", "opt.batch-phase",
       "opt.batch-diversity", "opt.batch-regularise", "opt.batch-second-order",
       "opt.data-parallel", "opt.model-parallel", "opt.bottleneck", "opt.local-connectivity",
       "opt.batch-memory", "opt.random-batches", "opt.parallel-layerwise"]


def test_every_id_is_registered():
    registry = studies.load_all()
    mine = sorted(k for k, s in registry.items() if s.fn.__module__ == opt.__name__)
    assert mine == sorted(IDS)
    assert all(registry[i].section == "Optimization" for i in IDS)


# --- the training helper against jdl.train.fit ----------------------------------------------------


def test_train_lanes_matches_fit():
    """A lane of the vmapped helper is exactly jdl.train.fit with the same key and init."""
    ds = data.load("digits", dtype=jnp.float64)
    train = (ds.x_train[:256], ds.y_train[:256])
    model, loss = opt._digits_mlp_loss(hidden=8)
    k_init, k_run = jax.random.key(0), jax.random.key(1)
    params = model.init(k_init, (-1, 64), jnp.float64)[1]
    reference = jt.fit(loss, params, jt.sgd(0.1), train, epochs=2, batch_size=32, key=k_run,
                       quiet=True)
    lanes, hist, _ = opt._train_lanes(
        lambda p, c, b, k: loss(p, b), lambda c: jt.sgd(0.1),
        lambda k, c: model.init(k, (-1, 64), jnp.float64)[1], {"lane": jnp.arange(2)}, train,
        epochs=2, batch_size=32, init_keys=jnp.stack([k_init] * 2),
        run_keys=jnp.stack([k_run] * 2))
    for lane in range(2):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[lane], b, rtol=1e-10, atol=1e-12),
                     lanes, reference.params)
        np.testing.assert_allclose(hist["loss"][lane], reference.history["loss"], rtol=1e-10)


def test_train_lanes_reports_divergence():
    x = jnp.ones((8, 1))
    with pytest.raises(FloatingPointError, match="lane 0"):
        opt._train_lanes(lambda p, c, b, k: jnp.sum(p * b) ** 2, lambda c: jt.sgd(1e6),
                         lambda k, c: jnp.ones(1), {"lane": jnp.arange(1)}, x, epochs=50,
                         batch_size=8, init_keys=jax.random.key(0)[None],
                         run_keys=jax.random.key(1)[None])


# --- initialisation, width, depth -----------------------------------------------------------------


def test_symmetry_holds_and_dropout_breaks_it(ctx):
    finding = well_formed(opt.symmetry(ctx), ctx)
    assert finding.verdict == HOLDS
    assert finding.numbers["spread_trained"][0] == 0.0 and finding.numbers["hidden_rank"][0] == 1
    assert opt.symmetry(ctx, dropout=0.5).verdict != HOLDS


def test_zero_init_stuck_with_hidden_layers_only(ctx):
    finding = well_formed(opt.zero_init(ctx), ctx)
    for act in ("tanh", "relu"):
        assert finding.numbers["per_activation"][act]["hidden_weight_l1_zero"] == 0.0
        assert finding.numbers["per_activation"][act]["stuck"]
    assert finding.verdict in (HOLDS, CAVEAT)
    assert opt.zero_init(ctx, hidden_layers=0).verdict == FAILS


def test_init_scale_saturates_tanh_not_relu(ctx):
    finding = well_formed(opt.init_scale(ctx), ctx)
    assert finding.verdict == HOLDS
    relu = opt.init_scale(ctx, activation="relu")
    assert relu.verdict == CAVEAT  # large scales still hurt, but nothing saturates more
    assert max(relu.numbers["saturation_init"]) - min(relu.numbers["saturation_init"]) < 0.1


def test_width_underfit_flips_when_every_width_suffices(ctx):
    assert well_formed(opt.width_underfit(ctx), ctx).verdict == HOLDS
    assert opt.width_underfit(ctx, widths=(16, 128)).verdict == FAILS


def test_model_size_caveat_and_flip_when_widest_is_needed(ctx):
    assert well_formed(opt.model_size(ctx), ctx).verdict == CAVEAT
    assert opt.model_size(ctx, widths=(1, 2, 4)).verdict == FAILS


def test_depth_resnet_flips_for_shallow_nets(ctx):
    finding = well_formed(opt.depth_resnet(ctx), ctx)
    assert finding.verdict == HOLDS
    assert opt.depth_resnet(ctx, depths=(1, 2)).verdict == FAILS


# --- restarts, decay, momentum, phases, schedules -------------------------------------------------


def test_best_of_k_is_exact_over_subsets():
    rng = np.random.default_rng(0)
    val, test = rng.normal(size=7), rng.normal(size=7)
    for k in (1, 3, 7):
        brute = np.mean([test[list(s)][np.argmin(val[list(s)])]
                         for s in itertools.combinations(range(7), k)])
        assert opt._best_of_k(val, test, k) == pytest.approx(brute, rel=1e-12)
    assert comb(7, 3) == len(list(itertools.combinations(range(7), 3)))


def test_restarts_help_nonconvex_not_convex(ctx):
    assert well_formed(opt.restarts(ctx), ctx).verdict == HOLDS
    assert opt.restarts(ctx, hidden=()).verdict == FAILS


def test_lr_decay_escape_caveat_and_wide_minimum(ctx):
    finding = well_formed(opt.lr_decay_escape(ctx), ctx)
    assert finding.verdict == CAVEAT
    escaped = dict(zip(finding.numbers["schedules"], finding.numbers["escaped_fraction"]))
    assert escaped["constant small"] == 0.0 and escaped["decay large->small"] == 1.0
    assert opt.lr_decay_escape(ctx, width=0.3, noise=0.2).verdict == FAILS


def test_momentum_effective_lr_sgd_not_adam(ctx):
    finding = well_formed(opt.momentum_effective_lr(ctx), ctx)
    assert finding.verdict == HOLDS
    assert finding.numbers["max_relative_error_transient"] < 1e-3
    assert opt.momentum_effective_lr(ctx, optimizer="adam").verdict == FAILS


def test_sgd_phases_flip_without_gradient_noise(ctx):
    assert well_formed(opt.sgd_phases(ctx), ctx).verdict == HOLDS
    assert opt.sgd_phases(ctx, batch_size=265).verdict == FAILS


def test_robbins_monro_rule_and_a_too_slow_decay(ctx):
    finding = well_formed(opt.robbins_monro(ctx), ctx)
    assert finding.verdict == HOLDS
    assert finding.numbers["converging"]["a/(b+t)"]
    assert not finding.numbers["converging"]["exponential"]
    # lr -> 0 and sum = inf, yet t^-0.1 is still near its start after the horizon
    slow = {"constant": jt.constant(0.02), "t^-0.1": jt.robbins_monro(0.02 * 100 ** 0.1, 100.0,
                                                                      0.1)}
    assert opt.robbins_monro(ctx, schedules=slow).verdict == FAILS


# --- batch size -----------------------------------------------------------------------------------


def test_batch_variance_needs_random_batches(ctx):
    assert well_formed(opt.batch_variance(ctx), ctx).verdict == HOLDS
    assert opt.batch_variance(ctx, sampling="sorted").verdict == FAILS


def test_batch_phase_needs_training_progress(ctx):
    assert well_formed(opt.batch_phase(ctx), ctx).verdict == HOLDS
    assert opt.batch_phase(ctx, lr=0.0).verdict == FAILS


def test_batch_diversity_flips_without_redundancy(ctx):
    assert well_formed(opt.batch_diversity(ctx), ctx).verdict == HOLDS
    assert opt.batch_diversity(ctx, mix=0.0).verdict == FAILS


def test_batch_regularise_runs_and_its_rule(ctx):
    finding = well_formed(opt.batch_regularise(ctx), ctx)
    assert finding.verdict in (HOLDS, FAILS)
    epochs = np.arange(1, 21)
    train = np.stack([1 / epochs, 1 / epochs])
    same = opt._batch_regularisation_verdict((8, 512), train, np.stack([train[0] + 0.1] * 2))
    assert same[0] == FAILS
    worse = opt._batch_regularisation_verdict((8, 512), train,
                                              np.stack([train[0] + 0.1, train[0] + 0.3]))
    assert worse[0] == HOLDS and worse[3] > 0.05
    # a large batch that stops early is compared where its training loss stopped
    level, matched = opt._at_matched_fit(np.stack([1 / epochs, 2 / epochs]),
                                         np.stack([epochs * 0.0 + 1, epochs * 0.0 + 2]))
    assert level == pytest.approx(0.1) and matched.tolist() == [1.0, 2.0]


def test_batch_second_order_flips_when_the_step_is_gradient_like(ctx):
    assert well_formed(opt.batch_second_order(ctx), ctx).verdict == HOLDS
    assert opt.batch_second_order(ctx, damping=10.0).verdict == CAVEAT


def test_batch_memory_flips_for_equal_widths(ctx):
    assert well_formed(opt.batch_memory(ctx), ctx).verdict == HOLDS
    assert opt.batch_memory(ctx, widths=(64, 64)).verdict == CAVEAT


def test_random_batches_flip_for_full_batches(ctx):
    assert well_formed(opt.random_batches(ctx), ctx).verdict == HOLDS
    assert opt.random_batches(ctx, batch_size=1078).verdict == FAILS


# --- parallelism and extra tips -------------------------------------------------------------------


@pytest.mark.devices(4)
def test_data_parallel_needs_synchronised_replicas(ctx):
    assert jax.device_count() >= 4, "conftest provides 4 host devices"
    finding = well_formed(opt.data_parallel(ctx), ctx)
    assert finding.verdict == HOLDS and finding.numbers["where"] == "in process"
    assert opt.data_parallel(ctx, synchronised=False).verdict == FAILS


def test_model_parallel_serial_layers_wait_towers_do_not(ctx):
    finding = well_formed(opt.model_parallel(ctx), ctx)
    assert finding.verdict == CAVEAT and finding.numbers["concurrent_stages"] == 1
    assert opt.model_parallel(ctx, kind="towers").verdict == HOLDS
    with pytest.raises(ValueError, match="kind"):
        opt.model_parallel(ctx, kind="ring")


def test_bottleneck_flips_for_a_mild_bottleneck(ctx):
    assert well_formed(opt.bottleneck(ctx), ctx).verdict == CAVEAT
    assert opt.bottleneck(ctx, widths=(32, 64)).verdict == FAILS  # a mild bottleneck


def test_local_connectivity_verdict_follows_its_numbers(ctx):
    finding = well_formed(opt.local_connectivity(ctx), ctx)
    n = finding.numbers
    acc = n["test_accuracy"]
    assert n["fraction"] < 0.25 and n["first_layer_weights"]["local 3x3"] == 1936
    saves = acc["local 3x3"] >= acc["dense"] - 0.02
    matters = acc["local 3x3"] > acc["random sparse"] + 0.01
    assert finding.verdict == (HOLDS if saves and matters else CAVEAT if saves else FAILS)


def test_local_mask_counts():
    mask = opt._local_mask(8, 2, 1)
    assert mask.shape == (64, 128)
    per_position = mask[:, ::2].sum(0).reshape(8, 8)
    assert per_position[0, 0] == 4 and per_position[0, 3] == 6 and per_position[3, 3] == 9


def test_parallel_layerwise_is_untestable_with_equal_matrices(ctx):
    finding = well_formed(opt.parallel_layerwise(ctx, batch_size=128), ctx)
    assert finding.verdict == UNTESTABLE
    assert finding.numbers["relative_difference"] < 1e-5
