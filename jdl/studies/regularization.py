"""Studies of the notes' Regularization section: bias, finite data, shift, overfitting, attacks.

In the notes' order: dataset bias and its remedies; finite data (learning
curve); distribution shift (ensemble uncertainty, a domain critic); the
overfitting remedies (feature extractor, validation selection, early
stopping, weight decay and its gradient bound, dropout, prior knowledge);
transfer learning with its risks; the adversarial defences; the Frobenius
and mixed norms, Cauchy-Schwarz and the mixed-norm bound.

Models are small MLPs on digits (float32). Several variants of a model
("lanes": seeds, penalty rates, data variants, remedies) train together in
one :func:`jdl.train.fit` call: their params are stacked (or kept side by
side in a dict) and the loss is the *sum* of the lanes' losses. Each lane's
gradient is then exactly its own loss's gradient and Adam works element by
element, so every lane takes the steps it would take alone (on shared
minibatches), while the whole sweep costs one compilation. Trainings that
several studies read are cached per ``(seed, settings)``, and each study's
losses and optimisers are built once per setting (``_*_program``), so a rerun
on other data of the same shapes (a flip case in the tests) reuses the
compiled programs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jdl import adversarial, data, losses, metrics, models, nn, regularize
from jdl import train as jt
from jdl.studies.common import fast_jit, plot_lines
from jdl.studies.registry import CAVEAT, FAILS, HOLDS, Finding, study

SECTION = "Regularization"
F32 = jnp.float32
EXACT = 1e-10  # relative error of an identity checked in float64


# --- shared helpers ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _digits(seed: int) -> data.Dataset:
    """Digits (pixels in [0, 1], float32) split 60/20/20, one split per run seed."""
    return data.load("digits", key=jax.random.fold_in(jax.random.key(seed), 2024), dtype=F32)


def _mlp(hidden: tuple[int, ...], outputs: int = 10, dropout: float = 0.0) -> nn.Layer:
    """``dense -> relu [-> dropout]`` per hidden width, then a dense output layer."""
    layers = []
    for width in hidden:
        layers += [nn.dense(width), nn.activation("relu")]
        if dropout:
            layers.append(nn.dropout(dropout))
    return nn.serial(*layers, nn.dense(outputs))


def _init_stack(model: nn.Layer, keys: jax.Array, features: int) -> Any:
    """Params of ``model`` for each key, stacked along a leading lane axis."""
    return fast_jit(jax.vmap(lambda k: model.init(k, (-1, features), F32)[1]))(keys)


def _lane(tree: Any, i: int) -> Any:
    """Lane ``i`` of a lane-stacked pytree."""
    return jax.tree.map(lambda a: a[i], tree)


def _logits(model: nn.Layer) -> Callable:
    """``apply(params, x) -> logits`` in evaluation mode."""
    return lambda params, x: model.apply(params, x)[0]


def _ce(model: nn.Layer) -> Callable:
    """``loss(params, (x, y))``: mean softmax cross-entropy of ``model``'s logits."""

    def loss(params, batch):
        x, y = batch
        return losses.softmax_cross_entropy(model.apply(params, x)[0], y)

    return loss


def _summed(lane_loss: Callable, in_axes: Any = None) -> Callable:
    """The sum over lanes of ``lane_loss(params_l, batch)`` for lane-stacked params.

    ``in_axes`` maps the batch (``None``: shared by every lane).
    """

    def loss(params, batch):
        return jnp.sum(jax.vmap(lane_loss, in_axes=(0, in_axes))(params, batch))

    return loss


def _scorer(model: nn.Layer) -> Callable:
    """A jitted ``score(params, x, y) -> (accuracies, losses)``, each ``(lanes,)``.

    ``params`` are lane-stacked; the losses are mean cross-entropies.
    """

    @fast_jit
    def score(params, x, y):
        logits = jax.vmap(lambda p: model.apply(p, x)[0])(params)
        return (jnp.mean(jnp.argmax(logits, -1) == y, -1),
                jax.vmap(lambda lg: losses.softmax_cross_entropy(lg, y))(logits))

    return score


def _verdict(main_ok: bool, all_ok: bool) -> str:
    """HOLDS if everything holds, CAVEAT if only the main part does, FAILS otherwise."""
    return HOLDS if main_ok and all_ok else CAVEAT if main_ok else FAILS


# --- dataset bias ------------------------------------------------------------------------------


BIAS_REMEDIES = ("crop", "noise", "all_classes", "penalty", "kill_neurons")


@functools.lru_cache(maxsize=4)
def _bias_program(penalty_rate: float, target_class: int, width: int = 32) -> dict:
    """The dataset-bias study's model, joint loss, optimiser and evaluation, built once.

    Reused objects let a rerun with other data (same shapes) reuse the compiled programs.
    """
    mask = models.corner_patch_mask((8, 8), size=2).reshape(64)
    body = nn.serial(nn.dense(width), nn.activation("relu"))
    model = nn.serial(body, nn.dense(10))
    ce = _ce(model)
    parts = {name: ce for name in ("baseline", "crop", "noise", "all_classes")}
    parts["penalty"] = models.input_gradient_penalty(ce, mask, penalty_rate)
    kill = width // 8

    def loss(params, batch):
        xs, labels = batch
        return sum(_summed(parts[n])(params[n], (xs[n], labels)) for n in parts)

    @fast_jit
    def evaluate(params, x_te, y_te, others, key):
        # kill the hidden units that respond most to the patch (the baseline model's) by
        # zeroing their output weights
        patched_others = models.remove_feature(others, mask, fill=1.0)
        response = jax.vmap(lambda p: jnp.mean(body.apply(p, patched_others)[0]
                                               - body.apply(p, others)[0], 0))(
            params["baseline"]["0_serial"])
        alive = 1.0 - jax.nn.one_hot(jnp.argsort(-response, axis=-1)[:, :kill], width).sum(1)
        head = params["baseline"]["1_dense"]
        params = dict(params, kill_neurons=dict(
            params["baseline"], **{"1_dense": dict(head, w=head["w"] * alive[:, :, None])}))
        with_patch = models.plant_feature(x_te, y_te, mask, target_class=target_class,
                                          key=key).x
        everywhere = models.remove_feature(x_te, mask, fill=1.0)
        prepare = {"crop": lambda a: models.remove_feature(a, mask),
                   "noise": lambda a: models.remove_feature(a, mask, fill="noise", key=key)}
        out = {}
        for name in ("baseline",) + BIAS_REMEDIES:
            prep = prepare.get(name, lambda a: a)

            def one(p):
                predict = lambda a: model.apply(p, a)[0]  # noqa: E731
                clean = jnp.mean(jnp.argmax(predict(prep(x_te)), -1) == y_te)
                patched = jnp.mean(jnp.argmax(predict(prep(everywhere)), -1) == y_te)
                return (models.reliance(predict, prep(with_patch), prep(x_te), y_te), clean,
                        clean - patched)

            out[name] = jax.vmap(one)(params[name])
        return out

    return {"mask": mask, "model": model, "loss": loss, "optimizer": optax.adam(0.01),
            "init": fast_jit(jax.vmap(lambda k: model.init(k, (-1, 64), F32)[1])),
            "evaluate": evaluate, "kill": kill, "width": width}


@study("reg.dataset-bias", SECTION,
       "Dataset Bias: The data is over representation a part of the distribution. How to deal "
       "with dataset bias: crop the feature out before training; photoshop them out with noise "
       "without adding another feature; add them to all classes so that the model is invariant "
       "to it; check which neurons detect it and kill them; penalize them at the loss function")
def dataset_bias(ctx, p_other=0.0, penalty_rate=10.0, target_class=3):
    """A bright 2x2 corner patch on every training digit of one class, and the five remedies.

    ``p_other`` is the chance that another class's digit carries the patch
    (1.0: every digit has it, no bias; the flip case).
    """
    ds = _digits(ctx.seed)
    key = ctx.key("reg.dataset-bias")
    k_plant, k_noise, k_all, k_init, k_run, k_test = jax.random.split(key, 6)
    program = _bias_program(float(penalty_rate), int(target_class))
    mask, kill, width = program["mask"], program["kill"], program["width"]
    x, y = ds.x_train, ds.y_train
    x_biased = models.plant_feature(x, y, mask, target_class=target_class, key=k_plant,
                                    p_other=p_other).x
    x_train = {"baseline": x_biased, "crop": models.remove_feature(x_biased, mask),
               "noise": models.remove_feature(x_biased, mask, fill="noise", key=k_noise),
               "all_classes": models.add_to_all_classes(x_biased, mask, key=k_all),
               "penalty": x_biased}
    seeds = ctx.pick(1, 2, 3)
    start = program["init"](jax.random.split(k_init, seeds))
    fit = jt.fit(program["loss"], {name: start for name in x_train}, program["optimizer"],
                 (x_train, y), epochs=ctx.pick(8, 15, 30), batch_size=64, key=k_run, quiet=True)
    outputs = program["evaluate"](fit.params, ds.x_test, ds.y_test, x[y != target_class], k_test)
    results = {name: dict(zip(("reliance", "clean_accuracy", "drop_with_patch_everywhere"),
                              np.asarray(v).mean(1).tolist()))
               for name, v in jax.device_get(outputs).items()}
    base = results["baseline"]
    picked_up = base["reliance"] >= 0.05 and base["drop_with_patch_everywhere"] >= 0.1
    works = {r: (results[r]["reliance"] <= 0.5 * base["reliance"]
                 and results[r]["drop_with_patch_everywhere"]
                 <= 0.5 * base["drop_with_patch_everywhere"]
                 and results[r]["clean_accuracy"] >= base["clean_accuracy"] - 0.03)
             for r in BIAS_REMEDIES}
    verdict = (HOLDS if picked_up and all(works.values()) else
               CAVEAT if picked_up and any(works.values()) else FAILS)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3))
    names = ("baseline",) + BIAS_REMEDIES
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, [results[n]["reliance"] for n in names], 0.4, label="reliance")
    ax.bar(pos + 0.2, [results[n]["drop_with_patch_everywhere"] for n in names], 0.4,
           label="accuracy drop, patch on every test digit")
    ax.set_xticks(pos, [n.replace("_", "\n") for n in names], fontsize=7)
    ax.set_ylabel("accuracy difference")
    ax.legend(fontsize=7)
    figure = ctx.save_figure(fig, "reg_dataset_bias")
    return Finding(
        verdict=verdict,
        summary=f"baseline: reliance {base['reliance']:.3f}, accuracy drop "
                f"{base['drop_with_patch_everywhere']:.3f} with the patch on every test digit; "
                "remedies (reliance/drop): " + ", ".join(f"{r} {results[r]['reliance']:.3f}/"
                            f"{results[r]['drop_with_patch_everywhere']:.3f}"
                            for r in BIAS_REMEDIES),
        method=f"digits, a 2x2 patch of 1s (models.corner_patch_mask, a corner that is blank in "
               f"digits) on every training digit of class {target_class} (models.plant_feature, "
               f"p_other={p_other}); MLP 64-32-10, Adam 0.01, {seeds} seed(s); remedies: crop "
               "(models.remove_feature, fill 0, train and test), noise (fill uniform noise, "
               "train and test), add to all classes (models.add_to_all_classes, rate 0.5), "
               f"penalty (models.input_gradient_penalty on the patch, rate {penalty_rate}), "
               f"kill the {kill} of {width} hidden units whose mean activation rises most with the "
               "patch on the other classes' training digits (the "
               "baseline's, output weights zeroed). models.reliance = test accuracy with the "
               "patch on the class's digits minus without; and the drop when every test digit "
               "carries it.",
        numbers={"results": results, "remedy_works": works},
        threshold="picked up if baseline reliance >= 0.05 and the patch-everywhere drop >= 0.1; "
                  "a remedy works if it halves both at <= 0.03 clean-accuracy cost; holds if "
                  "every remedy works, caveat if some do",
        caveat="" if verdict == HOLDS else
        (f"remedies that did not work: {[r for r, ok in works.items() if not ok]}. Crop and "
         "noise remove the feature by construction when applied at test time too."
         if picked_up and any(works.values()) else
         "the model did not pick up the patch (it does not predict the label here)"
         if not picked_up else "no remedy removed the reliance"),
        figures=[figure])


# --- finite data, distribution shift, domain critic -----------------------------------------------


@functools.lru_cache(maxsize=4)
def _finite_program(num_sizes: int, members: int) -> dict:
    """The learning-curve study's model, loss, optimiser and evaluation, built once."""
    model = _mlp((32,))

    def loss(params, batch):
        x, y, w = batch  # w: (examples, lanes), each lane's weights on its own subset
        logits = jax.vmap(lambda p: model.apply(p, x)[0])(params)
        per_example = jax.vmap(lambda lg: losses.softmax_cross_entropy(
            lg, y, reduction="none"))(logits)
        return jnp.sum(per_example * w.T)

    @fast_jit
    def evaluate(params, x_train, y_train, weights, x_test, y_test):
        probs = jax.vmap(lambda p: jax.nn.softmax(model.apply(p, x_test)[0]))(params)
        test_err = 1 - jnp.mean(jnp.argmax(probs, -1) == y_test, -1)
        train_logits = jax.vmap(lambda p: model.apply(p, x_train)[0])(params)
        train_err = jnp.sum((jnp.argmax(train_logits, -1) != y_train) * weights.T, -1)
        per_size = probs.reshape(num_sizes, members, *probs.shape[1:])
        mi = jax.vmap(lambda pr: jnp.mean(models.mutual_information(pr)))(per_size)
        ens_err = jax.vmap(lambda pr: 1 - jnp.mean(
            jnp.argmax(models.predictive_mean(pr), -1) == y_test))(per_size)
        return test_err, train_err, mi, ens_err

    return {"loss": loss, "optimizer": optax.adam(0.01), "evaluate": evaluate,
            "init": fast_jit(jax.vmap(lambda k: model.init(k, (-1, 64), F32)[1]))}


@study("reg.finite-data", SECTION,
       "Finite data: There is not enough datapoints to fully represent the entire distribution")
def finite_data(ctx, shuffle_labels=False):
    """Learning curve on digits: test error and ensemble disagreement against training-set size.

    ``shuffle_labels`` permutes the training labels (nothing to learn; the flip case).
    """
    ds = _digits(ctx.seed)
    key = ctx.key("reg.finite-data")
    k_perm, k_init, k_run, k_shuffle = jax.random.split(key, 4)
    n = ds.x_train.shape[0]
    sizes = ctx.pick((20, 100, n), (20, 50, 100, 200, 500, n), (10, 20, 50, 100, 200, 500, n))
    members = ctx.pick(2, 3, 5)
    y_train = ds.y_train
    if shuffle_labels:
        y_train = jax.random.permutation(k_shuffle, y_train)
    # nested subsets: lane (size s, member m) trains on the first s examples of one permutation
    rank = np.empty(n, int)
    rank[np.asarray(jax.random.permutation(k_perm, n))] = np.arange(n)
    lane_sizes = np.repeat(np.asarray(sizes), members)
    weights = ((rank[:, None] < lane_sizes[None, :]) / lane_sizes[None, :]).astype(np.float32)
    program = _finite_program(len(sizes), members)
    init_keys = jnp.tile(jax.random.split(k_init, members), len(sizes))
    weights = jnp.asarray(weights)
    fit = jt.fit(program["loss"], program["init"](init_keys), program["optimizer"],
                 (ds.x_train, y_train, weights), epochs=ctx.pick(150, 300, 600), batch_size=n,
                 key=k_run, quiet=True)
    test_err, train_err, mi, ens_err = map(np.asarray, program["evaluate"](
        fit.params, ds.x_train, y_train, weights, ds.x_test, ds.y_test))
    test_err = test_err.reshape(len(sizes), members).mean(1)
    train_err = train_err.reshape(len(sizes), members).mean(1)
    slope = float(np.polyfit(np.log(sizes), np.log(np.maximum(test_err, 1e-3)), 1)[0])
    gain = float(test_err[0] - test_err[-1])
    monotone = bool(np.all(np.diff(test_err) <= 0.01))
    fits_sample = bool(train_err[0] <= 0.02)
    main_ok = gain >= 0.1 and fits_sample
    verdict = _verdict(main_ok, monotone)
    figure = plot_lines(ctx, "reg_finite_data", list(sizes),
                         {"test error": test_err.tolist(), "training error": train_err.tolist(),
                          "ensemble mutual information (nats)": mi.tolist()},
                         xlabel="training examples", ylabel="error / nats", logx=True,
                         title="digits learning curve")
    return Finding(
        verdict=verdict,
        summary=f"test error {test_err[0]:.3f} with {sizes[0]} examples (training error "
                f"{train_err[0]:.3f}) -> {test_err[-1]:.3f} with {sizes[-1]}; log-log slope "
                f"{slope:.2f}; ensemble mutual information {mi[0]:.3f} -> {mi[-1]:.3f} nats",
        method=f"digits MLP 64-32-10 trained full-batch (Adam 0.01) on nested random subsets of "
               f"{list(sizes)} training examples{' with shuffled labels' if shuffle_labels else ''}"
               f", {members} initialisations each (all in one fit, each lane weighting its own "
               "subset); error on the 360 test digits, and the members' disagreement "
               "(models.mutual_information) as an estimate of what the sample leaves unknown.",
        numbers={"sizes": list(sizes), "test_error": test_err.tolist(),
                 "training_error": train_err.tolist(), "ensemble_test_error": ens_err.tolist(),
                 "mutual_information": mi.tolist(), "log_log_slope": slope},
        threshold="main: the smallest sample is fitted (training error <= 0.02) yet its test "
                  "error exceeds the full set's by >= 0.1; holds if the test error also falls "
                  "with every size increase (0.01 tolerance), caveat otherwise",
        caveat="" if verdict == HOLDS else
        ("the test error does not fall at every size" if main_ok else
         "more data did not lower the test error: there was nothing in the labels to learn"
         if shuffle_labels else "the learning curve does not show the finite-sample gap"),
        figures=[figure])


def _shifted(name: str, x: jax.Array, key) -> jax.Array:
    """Digits test inputs ``(n, 64)`` under a named shift (pixels stay in [0, 1])."""
    if name == "none":
        return x
    if name == "sensor_noise":
        return jnp.clip(x + 0.3 * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)
    if name == "inverted":
        return 1.0 - x
    if name == "rotated_90":
        return models.rotate(x.reshape(-1, 8, 8, 1), jnp.pi / 2).reshape(x.shape)
    if name == "uniform_noise":
        return jax.random.uniform(key, x.shape, x.dtype)
    if name == "lit_pixels":  # the pixels that are blank in every digit, lit in [0.5, 1)
        blank = jnp.asarray(np.asarray(data.load("digits").x_train).max(0) == 0)
        return jnp.where(blank, jax.random.uniform(key, x.shape, x.dtype, 0.5, 1.0), x)
    raise ValueError(f"_shifted: unknown shift {name!r}")


@functools.lru_cache(maxsize=2)
def _ensemble(seed: int, members: int, epochs: int) -> tuple[nn.Layer, models.Ensemble]:
    """A deep ensemble of digits MLPs 64-32-10 (``models.fit_ensemble``, Adam 0.01, batch 64)."""
    ds = _digits(seed)
    model = _mlp((32,))
    init = fast_jit(lambda k: model.init(k, (-1, 64), F32)[1])
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 11), members)
    return model, models.fit_ensemble(_ce(model), init, optax.adam(0.01),
                                      (ds.x_train, ds.y_train), keys=keys, epochs=epochs,
                                      batch_size=64, quiet=True)


@study("reg.shift-uncertainty", SECTION,
       "How to deal with distribution shifts: use predictive uncertainty whether its by training "
       "a bunch of models on diff data or by training a BNN to tell you how confident it is of "
       "the prediction")
def shift_uncertainty(ctx, shifts=("sensor_noise", "inverted", "rotated_90", "uniform_noise")):
    """A deep ensemble's uncertainty as a detector of shifted digits (AUROC).

    ``shifts=("none",)`` scores held-out digits of the same distribution (the flip case).
    """
    ds = _digits(ctx.seed)
    k_shift = jax.random.fold_in(ctx.key("reg.shift-uncertainty"), 1)
    members = ctx.pick(3, 5, 8)
    model, ensemble = _ensemble(ctx.seed, members, ctx.pick(8, 15, 30))
    apply = _logits(model)

    @fast_jit
    def scores(x):
        u = models.uncertainty(models.member_probabilities(apply, ensemble.params, x))
        single = models.entropy(jax.nn.softmax(apply(_lane(ensemble.params, 0), x)))
        return u.predictive_entropy, u.mutual_information, single, jnp.argmax(u.mean, -1)

    reference = scores(ds.x_test)
    table = {}
    for i, name in enumerate(shifts):
        shifted = ds.x_val if name == "none" else _shifted(name, ds.x_test,
                                                          jax.random.fold_in(k_shift, i))
        labels_ok = name != "uniform_noise"
        y = ds.y_val if name == "none" else ds.y_test
        out = scores(shifted)
        is_shifted = jnp.concatenate([jnp.zeros(len(reference[0])), jnp.ones(len(out[0]))])
        auc = [float(models.auroc(jnp.concatenate([r, o]), is_shifted))
               for r, o in zip(reference[:3], out[:3])]
        table[name] = {"auroc_predictive_entropy": auc[0], "auroc_mutual_information": auc[1],
                       "auroc_single_model_entropy": auc[2],
                       "mean_predictive_entropy": float(out[0].mean()),
                       "mean_mutual_information": float(out[1].mean()),
                       "accuracy": float(jnp.mean(out[3] == y)) if labels_ok else None}
    flagged = {name: t["auroc_mutual_information"] >= 0.75 for name, t in table.items()}
    verdict = (HOLDS if all(flagged.values()) else CAVEAT if any(flagged.values()) else FAILS)
    clean_acc = float(jnp.mean(reference[3] == ds.y_test))
    return Finding(
        verdict=verdict,
        summary="AUROC of the ensemble's disagreement (mutual information), shifted vs test "
                "digits: " + ", ".join(
                    f"{n} {t['auroc_mutual_information']:.2f}"
                    + (f" (accuracy {t['accuracy']:.2f})" if t["accuracy"] is not None else "")
                    for n, t in table.items()) + f"; clean accuracy {clean_acc:.3f}",
        method=f"a deep ensemble (models.fit_ensemble: {members} digits MLPs 64-32-10 from "
               "different initialisations and data orders, Adam 0.01) scores each input by "
               "the members' disagreement, the mutual information H[mean p] - mean H[p_m] "
               "(models.uncertainty: the epistemic part, which the bunch of models adds; the "
               "entropy of the mean also counts the ambiguity of in-distribution digits); AUROC "
               "(models.auroc) of telling the shifted copies of the 360 test digits from the "
               "originals; also the AUROC of the predictive entropy and of one member's "
               "entropy. jdl has no BNN: the "
               "ensemble is the notes' 'bunch of models'.",
        numbers={"shifts": table, "clean_accuracy": clean_acc,
                 "test_mean_predictive_entropy": float(reference[0].mean()),
                 "test_mean_mutual_information": float(reference[1].mean())},
        threshold="a shift is flagged if the mutual information's AUROC is >= 0.75; holds if "
                  "every shift is flagged, "
                  "caveat if some are",
        caveat="" if verdict == HOLDS else
        (f"not flagged: {[n for n, ok in flagged.items() if not ok]}: the members agree on "
         "confident (often wrong) answers there, so uncertainty misses part of the shift"
         if any(flagged.values()) else
         "no shift was told apart from in-distribution data"),
    )


DANN_ARMS = ("plain", "dann")


@functools.lru_cache(maxsize=4)
def _critic_program(scale: float) -> dict:
    """The domain-critic study's networks, losses, optimisers and evaluation, built once.

    Arms: ``plain`` (reversal scale 0: the critic learns, the features are not
    pushed) and ``dann`` (scale ``scale``); features 64-64-32 ReLU, classifier
    32-10, critic 32-32-1; a fresh logistic probe on the frozen features.
    """

    def make(reversal):
        features = nn.serial(nn.dense(64), nn.activation("relu"), nn.dense(32),
                             nn.activation("relu"))
        critic = nn.serial(nn.dense(32), nn.activation("relu"), nn.dense(1))
        return models.dann(features, nn.dense(10), critic, scale=reversal)

    arms = {"plain": make(0.0), "dann": make(scale)}
    objectives = {name: models.dann_loss(m) for name, m in arms.items()}
    extract = arms["plain"].children[0]  # the features layer (same in both arms)
    probe = nn.dense(1)

    def loss(params, batch):
        return sum(_summed(objectives[n])(params[n], batch) for n in DANN_ARMS)

    def probe_loss(p, batch):
        f, t = batch
        return losses.binary_cross_entropy(probe.apply(p, f)[0][:, 0], t, from_logits=True)

    @fast_jit
    def features(params, x):
        """``(arms * seeds, examples, 32)``, arm-major."""
        return jnp.concatenate([jax.vmap(lambda p: extract.apply(p["features"], x)[0])(
            params[n]) for n in DANN_ARMS])

    @fast_jit
    def evaluate(params, probes, x_test, y_test, x_target_test):
        out = {}
        for a, name in enumerate(DANN_ARMS):
            m = arms[name]
            seeds = jax.tree.leaves(params[name])[0].shape[0]
            q = jax.tree.map(lambda leaf: leaf[a * seeds:(a + 1) * seeds], probes)

            def one(p, q, m=m):
                f_src = extract.apply(p["features"], x_test)[0]
                f_tgt = extract.apply(p["features"], x_target_test)[0]
                probe_acc = 0.5 * (jnp.mean(probe.apply(q, f_src)[0] <= 0)
                                   + jnp.mean(probe.apply(q, f_tgt)[0] > 0))
                accuracy = lambda x: jnp.mean(  # noqa: E731
                    jnp.argmax(m.apply(p, x)[0][0], -1) == y_test)
                return (accuracy(x_test), accuracy(x_target_test),
                        models.domain_accuracy(m, p, x_test, x_target_test), probe_acc)

            out[name] = jax.vmap(one)(params[name], q)
        return out

    return {"loss": loss, "optimizer": optax.adam(0.005), "features": features,
            "init": fast_jit(jax.vmap(lambda k: arms["plain"].init(k, (-1, 64), F32)[1])),
            "probe_loss": _summed(probe_loss, in_axes=(1, None)),
            "probe_init": fast_jit(jax.vmap(lambda k: probe.init(k, (-1, 32), F32)[1])),
            "probe_optimizer": optax.adam(0.05), "evaluate": evaluate}


@study("reg.domain-critic", SECTION,
       "Use a domain critic where your model is trying to classify correctly and at the same "
       "time trying to represent the data features such that both domains have the same "
       "representation")
def domain_critic(ctx, scale=1.0, shift="sensor_noise"):
    """DANN (``models.dann``) against the same network without reversal (``scale=0``).

    ``shift="none"`` gives the target the source's distribution (the trivially aligned case).
    """
    ds = _digits(ctx.seed)
    key = ctx.key("reg.domain-critic")
    k_shift, k_test, k_init, k_run, k_probe = jax.random.split(key, 5)
    half = ds.x_train.shape[0] // 2
    x_source, y_source = ds.x_train[:half], ds.y_train[:half]
    x_target = _shifted(shift, ds.x_train[half:2 * half], k_shift)  # its labels are not used
    x_target_test = _shifted(shift, ds.x_test, k_test)

    seeds = ctx.pick(1, 2, 3)
    program = _critic_program(float(scale))
    start = program["init"](jax.random.split(k_init, seeds))
    fit = jt.fit(program["loss"], {n: start for n in DANN_ARMS}, program["optimizer"],
                 (x_source, y_source, x_target), epochs=ctx.pick(8, 30, 60), batch_size=64,
                 key=k_run, quiet=True)
    # a fresh linear probe per trained network: can the domains still be told apart?
    features = program["features"](fit.params, jnp.concatenate([x_source, x_target]))
    is_target = jnp.concatenate([jnp.zeros(half), jnp.ones(half)]).astype(F32)
    probes = jt.fit(program["probe_loss"], program["probe_init"](
        jax.random.split(k_probe, 2 * seeds)), program["probe_optimizer"],
        (jnp.moveaxis(features, 0, 1), is_target), epochs=ctx.pick(20, 50, 100),
        batch_size=128, key=k_probe, quiet=True).params
    scores = jax.device_get(program["evaluate"](fit.params, probes, ds.x_test, ds.y_test,
                                                x_target_test))
    results = {name: dict(zip(("source_accuracy", "target_accuracy", "critic_accuracy",
                               "fresh_probe_accuracy"), np.asarray(v).mean(1).tolist()))
               for name, v in scores.items()}
    plain, dann = results["plain"], results["dann"]
    fooled = dann["critic_accuracy"] <= 0.65
    aligned = fooled and dann["fresh_probe_accuracy"] <= 0.65
    classifies = dann["source_accuracy"] >= plain["source_accuracy"] - 0.03
    target_gain = dann["target_accuracy"] - plain["target_accuracy"]
    verdict = _verdict(aligned and classifies, target_gain >= 0.02)
    return Finding(
        verdict=verdict,
        summary=f"critic accuracy {plain['critic_accuracy']:.2f} -> {dann['critic_accuracy']:.2f}"
                f", fresh probe {plain['fresh_probe_accuracy']:.2f} -> "
                f"{dann['fresh_probe_accuracy']:.2f}; source accuracy "
                f"{plain['source_accuracy']:.3f} -> {dann['source_accuracy']:.3f}, target "
                f"accuracy {plain['target_accuracy']:.3f} -> {dann['target_accuracy']:.3f}",
        method=f"digits: half the training set labelled (source), the other half unlabelled "
               f"with {shift.replace('_', ' ')} (target: Gaussian noise of std 0.3, clipped). "
               "models.dann (features 64-64-32 ReLU, classifier 32-10, critic 32-32-1) trained "
               f"on models.dann_loss with gradient reversal scale {scale} against the same "
               f"network with scale 0 (critic trained, features not pushed), Adam 0.005, "
               f"{seeds} seed(s). Critic balanced accuracy (models.domain_accuracy) on the "
               "test digits vs their shifted copies, and that of a fresh logistic probe "
               "trained on the frozen features (a fooled critic need not mean aligned "
               "features).",
        numbers=results | {"target_gain": target_gain},
        threshold="main: the same representation, i.e. neither the DANN critic nor a fresh "
                  "probe tells the domains apart (balanced accuracy <= 0.65), with source "
                  "accuracy within 0.03 of the plain network's; holds if target accuracy also "
                  "rises by >= 0.02, caveat otherwise",
        caveat="" if verdict == HOLDS else
        (f"The representations are aligned, but the target is not classified better (change "
         f"{target_gain:+.3f})." if aligned and classifies else
         f"The critic is fooled (balanced accuracy {dann['critic_accuracy']:.2f}), as the notes "
         "describe, but the representations are not the same: a fresh probe tells the "
         f"domains apart at {dann['fresh_probe_accuracy']:.2f} on the DANN features "
         f"({plain['fresh_probe_accuracy']:.2f} on the plain network's). Maximising the "
         "critic's loss is also achieved by making it confidently wrong, so the features "
         "chase the current critic instead of becoming domain-invariant (a constant reversal "
         "scale, no schedule); target accuracy changes by "
         f"{target_gain:+.3f}." if fooled and not aligned else
         "the critic still tells the domains apart" if not fooled else
         "alignment cost source accuracy"))


@study("reg.feature-extractor", SECTION,
       "How to deal with overfitting: Use some feature extractor to reduce dimensionality")
def feature_extractor(ctx, components=(8, 16, 32), n_train=None, fit_on="all_inputs"):
    """An MLP on the top PCA components of few digits against the same MLP on the 64 pixels.

    The reduction is judged against the same extractor keeping all 64
    components (a centred rotation of the pixels), which isolates the
    dimensionality; the raw pixels are reported too. ``components=(2,)``
    throws away too much (the flip case).
    """
    ds = _digits(ctx.seed)
    key = ctx.key("reg.feature-extractor")
    n_train = n_train or ctx.pick(30, 30, 50)
    seeds = ctx.pick(1, 3, 5)
    x_tr, y_tr = ds.x_train[:n_train], ds.y_train[:n_train]
    inputs = {"pixels": (x_tr, ds.x_test)}
    for k in tuple(components) + (64,):
        project = data.fit_pca(ds.x_train if fit_on == "all_inputs" else x_tr, k)
        inputs[f"pca_{k}"] = (project(x_tr), project(ds.x_test))
    model = _mlp((64,))
    ce = _ce(model)

    def loss(params, batch):
        features, y = batch
        return sum(_summed(ce)(params[n], (features[n], y)) for n in inputs)

    init_keys = jax.random.split(key, seeds)
    params0 = {n: _init_stack(model, init_keys, tr.shape[1]) for n, (tr, _) in inputs.items()}
    params = jt.fit(loss, params0, optax.adam(0.01), ({n: tr for n, (tr, _) in inputs.items()},
                                                     y_tr), epochs=ctx.pick(100, 300, 300),
                    batch_size=n_train, key=jax.random.fold_in(key, 1), quiet=True).params
    table = {}
    score = _scorer(model)
    for n, (tr, te) in inputs.items():
        train_acc = float(score(params[n], tr, y_tr)[0].mean())
        test_acc = float(score(params[n], te, ds.y_test)[0].mean())
        table[n] = {"train_accuracy": train_acc, "test_accuracy": test_acc,
                    "gap": train_acc - test_acc, "inputs": int(tr.shape[1])}
    reduced = [n for n in table if n not in ("pixels", "pca_64")]
    best = max(reduced, key=lambda n: table[n]["test_accuracy"])
    gain = table[best]["test_accuracy"] - table["pca_64"]["test_accuracy"]
    narrower = table[best]["gap"] < table["pca_64"]["gap"]
    vs_pixels = table[best]["test_accuracy"] - table["pixels"]["test_accuracy"]
    verdict = _verdict(gain >= 0.01 and narrower, vs_pixels >= 0)
    return Finding(
        verdict=verdict,
        summary=f"{n_train} training digits: test accuracy with {best.replace('_', ' ')} "
                f"{table[best]['test_accuracy']:.3f} (gap {table[best]['gap']:.3f}) vs all 64 "
                f"components {table['pca_64']['test_accuracy']:.3f} (gap "
                f"{table['pca_64']['gap']:.3f}) vs raw pixels "
                f"{table['pixels']['test_accuracy']:.3f}",
        method=f"digits, {n_train} labelled training examples; PCA (the principal directions of "
               "data.fit_whiten(method='pca'), fitted on "
               + ("all 1078 training inputs without labels" if fit_on == "all_inputs" else
                  "the labelled examples") + ", not whitened) as the feature extractor, keeping "
               f"the {list(components)} components of largest variance, against all 64 "
               "components and the raw pixels; MLP (inputs)-64-10 ReLU, Adam 0.01, full batch, "
               f"{seeds} seed(s); 360 test digits.",
        numbers=table,
        threshold="main: the best reduction beats all 64 components by >= 0.01 test accuracy "
                  "with a smaller train-test gap; holds if it also beats the raw pixels, caveat "
                  "otherwise",
        caveat="" if verdict == HOLDS else
        (f"Fewer components help within the PCA representation (+{gain:.3f}), but the raw "
         f"pixels are still better by {-vs_pixels:.3f}: the centred, rotated inputs cost more "
         "than the reduction gains." if gain >= 0.01 and narrower else
         "reducing the dimensionality did not help here"))


# --- weight decay: one sweep of penalty rates, read by four studies ------------------------------


@functools.lru_cache(maxsize=2)
def _sweep_program(features: int) -> dict:
    """The weight-decay sweep's model, loss, optimiser and evaluation, built once.

    The loss is a :class:`jdl.train.StatefulLoss` whose model state holds the
    lanes' settings ``{"rates": (lanes,), "masks": (lanes, features)}``.
    """
    model = _mlp((64,))
    ce = _ce(model)

    def lane_loss(params, rate, mask, batch):
        x, y = batch
        penalised = regularize.add_penalty(
            ce, lambda p: regularize.l2_penalty(p, rate, mask=regularize.kernel_mask))
        return penalised(params, (x * mask, y))

    def loss(params, config, batch, key, train):
        del key, train
        lanes = jax.vmap(lane_loss, in_axes=(0, 0, 0, None))(
            params, config["rates"], config["masks"], batch)
        return jnp.sum(lanes), config

    @fast_jit
    def evaluate(params, masks, x, y):
        logits = jax.vmap(lambda p, m: model.apply(p, x * m)[0])(params, masks)
        acc = jnp.mean(jnp.argmax(logits, -1) == y[None], -1)
        return acc, jax.vmap(lambda lg: losses.softmax_cross_entropy(lg, y))(logits)

    return {"model": model, "loss": jt.StatefulLoss(loss),
            "optimizer": optax.sgd(0.1, momentum=0.9), "evaluate": evaluate,
            "init": fast_jit(jax.vmap(lambda k: model.init(k, (-1, features), F32)[1]))}


@functools.lru_cache(maxsize=8)
def _decay_sweep(seed: int, n_train: int, noise_features: int, rates: tuple[float, ...],
                 steps: int, seeds: int, removed: str = "noise") -> dict:
    """Digits with ``noise_features`` useless uniform-noise columns, trained at each L2 rate.

    Lanes: every rate of ``rates`` on the noisy inputs, plus one lane without
    penalty whose ``removed`` columns are zeroed ("noise": the planted
    columns, i.e. the useless features removed; "informative": the 16 pixels
    of highest training variance), each for ``seeds`` initialisations. An MLP
    ``(64 + noise) -> 64 -> 10`` (ReLU) is trained full-batch on ``n_train``
    examples by gradient descent with momentum (0.1, 0.9) for ``steps``
    steps, the penalty ``regularize.l2_penalty`` (kernels only) added to the
    cross-entropy with ``regularize.add_penalty``.
    """
    ds = _digits(seed)
    key = jax.random.fold_in(jax.random.key(seed), 77)
    rng = np.random.default_rng(seed)

    def noisy(x):
        noise = rng.uniform(size=(x.shape[0], noise_features)).astype(np.float32)
        return jnp.concatenate([x, jnp.asarray(noise)], 1)

    x_tr, y_tr = noisy(ds.x_train[:n_train]), ds.y_train[:n_train]
    x_va, x_te = noisy(ds.x_val), noisy(ds.x_test)
    features = x_tr.shape[1]
    is_noise = np.arange(features) >= 64
    if removed == "noise":
        removed_mask = is_noise
    else:
        top = np.argsort(-np.asarray(ds.x_train.std(0)))[:16]
        removed_mask = np.isin(np.arange(features), top)
    lane_rates = np.repeat(np.append(np.asarray(rates, float), 0.0), seeds)
    lane_keep = np.repeat(np.append(np.ones(len(rates)), 0.0), seeds)
    # per-lane input mask: 1 everywhere except the removed columns of the last lane
    masks = np.where(removed_mask[None, :], lane_keep[:, None], 1.0).astype(np.float32)
    program = _sweep_program(features)
    model = program["model"]
    init_keys = jnp.tile(jax.random.split(jax.random.fold_in(key, 1), seeds), len(rates) + 1)
    params0 = program["init"](init_keys)
    # the lanes' settings travel as the (never updated) model state, so that a sweep with other
    # rates or masks of the same shapes reuses the compiled program
    config = {"rates": jnp.asarray(lane_rates, F32), "masks": jnp.asarray(masks)}
    fit = jt.fit(program["loss"], params0, program["optimizer"], (x_tr, y_tr), epochs=steps,
                 batch_size=n_train, key=jax.random.fold_in(key, 2), model_state=config,
                 quiet=True)
    params = fit.params
    (train_acc, train_ce), (val_acc, val_ce), (test_acc, test_ce) = jax.device_get(
        [program["evaluate"](params, config["masks"], x, y)
         for x, y in ((x_tr, y_tr), (x_va, ds.y_val), (x_te, ds.y_test))])
    informative = np.asarray(ds.x_train.std(0)) > 0.2
    w, w0 = np.abs(np.asarray(params["0_dense"]["w"])), np.abs(np.asarray(params0["0_dense"]["w"]))
    shrink = lambda rows: w[:, rows].mean((1, 2)) / w0[:, rows].mean((1, 2))  # noqa: E731
    return {"model": model, "params": params, "params0": params0, "masks": masks, "x_test": x_te,
            "lane_rates": lane_rates, "lane_removed": lane_keep == 0, "seeds": seeds,
            "rates": tuple(rates), "train_acc": train_acc, "val_acc": val_acc,
            "test_acc": test_acc, "train_ce": train_ce, "val_ce": val_ce, "test_ce": test_ce,
            "noise_shrink": shrink(np.flatnonzero(is_noise)),
            "informative_shrink": shrink(np.flatnonzero(np.append(informative,
                                                                  np.zeros(noise_features,
                                                                           bool))))}


def _by_rate(values: np.ndarray, sweep: dict) -> list[float]:
    """Seed means of a per-lane quantity, one per rate (the removed-feature lane left out)."""
    s = sweep["seeds"]
    return [float(values[i * s:(i + 1) * s].mean()) for i in range(len(sweep["rates"]))]


def _sweep_settings(ctx) -> dict:
    return dict(seed=ctx.seed, n_train=ctx.pick(200, 200, 400), noise_features=64,
                rates=(0.0, 1e-3, 1e-2, 3e-2, 1e-1), steps=ctx.pick(1500, 1500, 3000),
                seeds=ctx.pick(2, 2, 5), removed="noise")


@study("reg.validation-selection", SECTION,
       "Choosing appropriate complexity by training a model with changing parameters of "
       "regularization and testing it against a validation set to test reality")
def validation_selection(ctx, select_on="val"):
    """Pick the L2 rate of the sweep by validation loss; score the pick by test loss.

    ``select_on="train"`` picks on the training loss instead (the flip case).
    """
    sweep = _decay_sweep(**_sweep_settings(ctx))
    rates = sweep["rates"]
    score = _by_rate(sweep[f"{select_on}_ce"], sweep)
    test = _by_rate(sweep["test_ce"], sweep)
    test_acc = _by_rate(sweep["test_acc"], sweep)
    pick = int(np.argmin(score))
    zero, oracle = int(np.argmin(rates)), int(np.argmin(test))
    regret = test[pick] / test[oracle] - 1
    verdict = (HOLDS if regret <= 0.02 and test[pick] <= test[zero] else
               CAVEAT if regret <= 0.05 else FAILS)
    return Finding(
        verdict=verdict,
        summary=f"{select_on} loss picks rate {rates[pick]:g}: test loss {test[pick]:.3f} "
                f"(accuracy {test_acc[pick]:.3f}); no penalty {test[zero]:.3f} "
                f"({test_acc[zero]:.3f}); best rate in hindsight {rates[oracle]:g} "
                f"{test[oracle]:.3f}",
        method="the weight-decay sweep (reg.weight-decay): the rate with the lowest mean "
               f"{select_on} cross-entropy over seeds, its test cross-entropy against no penalty "
               "and against the best rate in hindsight (oracle).",
        numbers={"rates": list(rates), f"{select_on}_loss": score, "test_loss": test,
                 "test_accuracy": test_acc, "picked_rate": rates[pick],
                 "relative_regret_to_oracle": regret},
        threshold="holds if the pick's test loss is within 2% of the oracle's and not above the "
                  "unpenalised one; caveat within 5%; does not hold beyond",
        caveat="" if verdict == HOLDS else
        f"Selecting on the {select_on} set left {regret:.0%} of test loss to the best rate: "
        "only held-out data measures how the model generalises.")


NEVER = 10**9  # a patience no run reaches


@functools.lru_cache(maxsize=4)
def _early_program(hidden: tuple[int, ...], lr: float) -> tuple:
    """``(model, loss, optimizer, init, score)`` of the early-stopping study, built once."""
    model = _mlp(hidden)
    return (model, _ce(model), optax.adam(lr),
            fast_jit(jax.vmap(lambda k: model.init(k, (-1, 64), F32)[1])), _scorer(model))


@study("reg.early-stopping", SECTION,
       "testing it against a validation set to test reality, only stop when the model is "
       "getting worse and use the last snapshot of the best model")
def early_stopping(ctx, n_train=None, hidden=(256, 256), epochs=None, lr=1e-3):
    """``jdl.train.EarlyStopping`` on an over-parameterised MLP trained on few digits.

    ``n_train`` / ``hidden`` / ``epochs`` let a test remove the overfitting (the flip case).
    """
    ds = _digits(ctx.seed)
    key = ctx.key("reg.early-stopping")
    n_train = n_train or ctx.pick(100, 100, 200)
    epochs = epochs or ctx.pick(150, 150, 300)
    patience = ctx.pick(10, 10, 20)
    seeds = ctx.pick(3, 3, 5)
    model, loss, optimizer, init, score = _early_program(tuple(hidden), float(lr))
    train_data, val_data = (ds.x_train[:n_train], ds.y_train[:n_train]), (ds.x_val, ds.y_val)
    test = (ds.x_test, ds.y_test)
    starts = init(jax.random.split(key, seeds))
    rows, curves = [], []
    for i in range(seeds):
        common = dict(epochs=epochs, batch_size=min(32, n_train), key=jax.random.fold_in(key, i),
                      val_data=val_data, quiet=True)
        # a patience longer than any run never stops: the best snapshot and the last epoch
        full = jt.fit(loss, _lane(starts, i), optimizer, train_data,
                      early_stopping=jt.EarlyStopping(NEVER), **common)
        stopped = jt.fit(loss, _lane(starts, i), optimizer, train_data,
                         early_stopping=jt.EarlyStopping(patience), **common)
        three = jax.tree.map(lambda *a: jnp.stack(a), full.params, full.state.params,
                             stopped.params)  # best, last, stopped
        acc, test_loss = jax.device_get(score(three, *test))
        rows.append([full.best_epoch, len(stopped.history["loss"]), stopped.best_epoch,
                     *test_loss.tolist(), *acc.tolist()])
        curves.append(full.history["val_loss"])
    r = np.asarray(rows, float).mean(0)
    names = ("best_epoch", "stopped_after", "stopped_best_epoch", "test_loss_best",
             "test_loss_last", "test_loss_stopped", "test_accuracy_best", "test_accuracy_last",
             "test_accuracy_stopped")
    numbers = dict(zip(names, r.tolist()))
    overfit = r[0] < epochs - patience
    loss_gain = (r[4] - r[5]) / r[4]
    acc_change = r[8] - r[7]
    verdict = (HOLDS if overfit and loss_gain >= 0.05 and acc_change >= -0.01 else
               CAVEAT if overfit and loss_gain >= 0.05 or not overfit else FAILS)
    figure = plot_lines(ctx, "reg_early_stopping", list(range(1, epochs + 1)),
                         {f"validation loss, seed {i}": c.tolist() for i, c in
                          enumerate(curves)}, xlabel="epoch", ylabel="cross-entropy",
                         title=f"{n_train} training digits, MLP {hidden}")
    return Finding(
        verdict=verdict,
        summary=f"validation loss best at epoch {r[0]:.0f} of {epochs}; patience {patience} "
                f"stops after {r[1]:.0f} epochs; test loss restored {r[5]:.3f} vs trained to the "
                f"end {r[4]:.3f}, test accuracy {r[8]:.3f} vs {r[7]:.3f}",
        method=f"digits, {n_train} training examples, MLP 64-{'-'.join(map(str, hidden))}-10 "
               f"(ReLU), Adam {lr:g}, batch 32, {epochs} epochs, {seeds} seed(s); jdl.train.fit "
               f"with EarlyStopping(patience={patience}) on the validation loss (359 digits) "
               "restores the best epoch's params; compared with the last epoch of the same run "
               "without stopping (an unreachable patience), on the 360 test digits.",
        numbers=numbers | {"epochs": epochs, "patience": patience,
                           "relative_test_loss_gain": float(loss_gain)},
        threshold="overfitting if the best validation epoch comes more than `patience` epochs "
                  "before the end; holds if the restored snapshot then has >= 5% lower test "
                  "loss and at most 0.01 lower test accuracy than the last epoch",
        caveat="" if verdict == HOLDS else
        ("the model never got worse on the validation set: early stopping just trains to the "
         "end" if not overfit else
         f"the restored snapshot has a lower test loss but {-acc_change:.3f} lower accuracy"
         if loss_gain >= 0.05 else "the restored snapshot is not better on the test set"),
        figures=[figure])


@study("reg.weight-decay", SECTION,
       "Introduce weight decay that penalizes the size of weights in the loss function making "
       "the useless weights tend to 0")
def weight_decay(ctx, rates=None):
    """Planted useless inputs: their first-layer weights against the informative pixels'."""
    settings = _sweep_settings(ctx)
    if rates is not None:
        settings["rates"] = tuple(rates)
    sweep = _decay_sweep(**settings)
    rates = sweep["rates"]
    noise = _by_rate(sweep["noise_shrink"], sweep)
    informative = _by_rate(sweep["informative_shrink"], sweep)
    acc = _by_rate(sweep["test_acc"], sweep)
    top = int(np.argmax(rates))
    zero = int(np.argmin(rates))
    selectivity = [n / i for n, i in zip(noise, informative)]
    to_zero = noise[top] < 0.15 and rates[top] > 0
    selective = selectivity[top] < 0.5 * selectivity[zero]
    cost = acc[zero] - acc[top]
    main_ok = to_zero and selective
    verdict = _verdict(main_ok, cost <= 0.03)
    figure = plot_lines(ctx, "reg_weight_decay", list(rates),
                         {"useless (noise) inputs": noise, "informative pixels": informative},
                         xlabel="L2 rate", ylabel="mean |w| / mean |w| at init", logx=True,
                         title="first-layer weights after training")
    return Finding(
        verdict=verdict,
        summary=f"useless-input weights at {noise[top]:.2f}x their initial size with rate "
                f"{rates[top]:g} (informative pixels {informative[top]:.2f}x; {noise[zero]:.2f}x "
                f"vs {informative[zero]:.2f}x without decay); test accuracy {acc[zero]:.3f} -> "
                f"{acc[top]:.3f}",
        method=f"digits, {settings['n_train']} training examples with {settings['noise_features']}"
               " appended uniform-noise columns (useless by construction); MLP 128-64-10 ReLU, "
               f"full-batch GD with momentum, {settings['steps']} steps, loss + "
               "regularize.l2_penalty (rate/2 sum w^2, kernels) for each rate, "
               f"{settings['seeds']} seed(s) each; mean |w| of the first-layer rows of the noise "
               "inputs and of the informative pixels (training std > 0.2), relative to init.",
        numbers={"rates": list(rates), "noise_weight_ratio": noise,
                 "informative_weight_ratio": informative, "test_accuracy": acc,
                 "noise_over_informative": selectivity},
        threshold="main: at the largest rate the useless weights fall below 0.15x their initial "
                  "size and shrink at least twice as much (relative to the informative weights) "
                  "as without decay; holds if that rate also costs at most 0.03 test accuracy, "
                  "caveat otherwise",
        caveat="" if verdict == HOLDS else
        ("Decay shrinks every weight; the useless ones only go to 0 faster, because no data "
         "gradient holds them up. The rate that drives them near 0 also shrinks the useful "
         f"weights and costs {cost:.2f} test accuracy here, so the rate has to be chosen on a "
         "validation set." if main_ok else
         "The useless weights did not shrink toward 0 faster than the informative ones."),
        figures=[figure])


def _max_entry_bound(params) -> float:
    """Product over the kernels of the largest |w_ij| (not a norm bound: for the flip test)."""
    kernels = [leaf for leaf in jax.tree.leaves(params) if leaf.ndim >= 2]
    return float(np.prod([np.abs(np.asarray(w)).max() for w in kernels]))


@study("reg.weight-norm-bound", SECTION,
       "this works because the norm of the weights are an upper bound to the gradient of the "
       "function")
def weight_norm_bound(ctx, norms=("spectral", "frobenius")):
    """``regularize.lipschitz_bound`` against the largest measured input-Jacobian norm.

    ``norms`` may include ``"max_entry"`` (the product of the largest entries,
    not a norm that bounds anything) to show the check can fail.
    """
    sweep = _decay_sweep(**_sweep_settings(ctx))
    model, params, masks = sweep["model"], sweep["params"], jnp.asarray(sweep["masks"])
    x = sweep["x_test"]

    def jacobian_norms(p, m):
        f = lambda xi: model.apply(p, (xi * m)[None])[0][0]  # noqa: E731
        jac = jax.vmap(jax.jacrev(f))(x)
        return jnp.linalg.norm(jac, ord=2, axis=(-2, -1))

    largest = fast_jit(lambda p: jax.vmap(jacobian_norms)(p, masks).max(-1))
    measured = np.asarray(largest(params))
    lanes = len(measured)

    def lane_bounds(trees, norm):
        if norm == "max_entry":
            return [_max_entry_bound(_lane(trees, i)) for i in range(lanes)]
        return [float(regularize.lipschitz_bound(model, _lane(trees, i), norm=norm))
                for i in range(lanes)]

    bounds = {norm: lane_bounds(params, norm) for norm in norms}
    # at initialisation, for comparison: random layers do not align
    init_looseness = float(np.mean(np.asarray(lane_bounds(sweep["params0"], norms[0]))
                                   / np.asarray(largest(sweep["params0"]))))
    ok = {norm: all(b >= m * (1 - 1e-5) for b, m in zip(bounds[norm], measured))
          for norm in norms}
    holds = all(ok.values())
    rates = sweep["rates"]
    by_rate_bound = {n: _by_rate(np.asarray(b), sweep) for n, b in bounds.items()}
    by_rate_measured = _by_rate(measured, sweep)
    first = norms[0]
    looseness = [b / m for b, m in zip(by_rate_bound[first], by_rate_measured)]
    figure = plot_lines(ctx, "reg_weight_norm_bound", list(rates),
                         {**{f"{n} bound": v for n, v in by_rate_bound.items()},
                          "largest measured ||df/dx||": by_rate_measured},
                         xlabel="L2 rate", ylabel="input-gradient norm", logx=True,
                         title="weight-norm bound vs measured gradient")
    return Finding(
        verdict=HOLDS if holds else FAILS,
        summary=f"{first} bound >= largest measured Jacobian norm in {lanes} models: "
                f"{ok[first]}; bound/measured {min(looseness):.2f}-{max(looseness):.2f}x after "
                f"training ({init_looseness:.1f}x at init); "
                f"rate 0 -> {max(rates):g}: bound {by_rate_bound[first][0]:.3g} -> "
                f"{by_rate_bound[first][-1]:.3g}, measured {by_rate_measured[0]:.3g} -> "
                f"{by_rate_measured[-1]:.3g}",
        method="the weight-decay sweep's MLPs (reg.weight-decay); for each, the spectral norm of "
               "the input Jacobian of the logits at every test input (the largest is a lower "
               "estimate of the Lipschitz constant) against regularize.lipschitz_bound, the "
               "product of the layers' weight norms times the activations' constants. A bound "
               "near 1x means the trained layers' top singular vectors line up.",
        numbers={"rates": list(rates), "bound": by_rate_bound,
                 "largest_measured_gradient_norm": by_rate_measured,
                 "bound_holds": ok, "bound_over_measured": looseness,
                 "bound_over_measured_at_init": init_looseness},
        threshold="holds if every bound is >= every measured Jacobian norm (float32 rounding "
                  "1e-5 allowed)",
        caveat="" if holds else
        "Only products of operator norms (spectral, or the larger Frobenius) bound the gradient; "
        f"{[n for n, v in ok.items() if not v]} did not.",
        figures=[figure])


@study("reg.decay-gradient-descent", SECTION, "the weight decay procedure is gradient descent of "
       "its norm")
def decay_gradient_descent(ctx, weights="initial", rate=0.1, lr=0.5):
    """One decay step against a gradient step on ``||w||`` and on ``||w||^2 / 2``; plus a real loss.

    ``weights="unit"`` rescales the weights to norm 1, where the two gradients coincide.
    """
    ds = _digits(ctx.seed)
    model = _mlp((16,))
    params = model.init(jax.random.key(ctx.seed), (-1, 64), jnp.float64)[1]
    flat, unravel = ravel_pytree(params)
    if weights == "unit":
        flat = flat / jnp.linalg.norm(flat)
        params = unravel(flat)
    decay = optax.chain(regularize.weight_decay(rate), optax.sgd(lr))
    ce = _ce(model)
    penalised = regularize.add_penalty(ce, lambda p: regularize.l2_penalty(p, rate))

    @fast_jit
    def measure(params, batch):
        flat = ravel_pytree(params)[0]

        def one_step(optimizer, loss):
            grads = jax.grad(loss)(params, batch) if loss is not None else jax.tree.map(
                jnp.zeros_like, params)
            upd, _ = optimizer.update(grads, optimizer.init(params), params)
            return ravel_pytree(optax.apply_updates(params, upd))[0]

        step = one_step(decay, None)  # a zero data gradient: the decay alone
        on_square = flat - lr * jax.grad(lambda w: rate * 0.5 * jnp.sum(w ** 2))(flat)
        on_norm = flat - lr * jax.grad(lambda w: rate * jnp.linalg.norm(w))(flat)
        size = jnp.linalg.norm(flat)
        # on a real loss: SGD on loss + l2_penalty against the decay transform before SGD,
        # and Adam on loss + penalty against AdamW
        sgd_gap = jnp.linalg.norm(one_step(optax.sgd(lr), penalised) - one_step(decay, ce))
        adam_gap = jnp.linalg.norm(one_step(optax.adam(1e-2), penalised)
                                   - one_step(optax.adamw(1e-2, weight_decay=rate), ce))
        return (jnp.linalg.norm(step - on_square) / size, jnp.linalg.norm(step - on_norm) / size,
                size, sgd_gap, adam_gap)

    batch = (jnp.asarray(ds.x_train[:64], jnp.float64), ds.y_train[:64])
    err_square, err_norm, size, sgd_gap, adam_gap = map(float, measure(params, batch))
    matches_square, matches_norm = err_square < EXACT, err_norm < EXACT
    verdict = HOLDS if matches_norm else CAVEAT if matches_square else FAILS
    return Finding(
        verdict=verdict,
        summary=f"decay step vs gradient step on rate ||w||^2/2: error {err_square:.1e}; on rate "
                f"||w||: {err_norm:.2g} (||w|| = {size:.3g}); SGD on loss + penalty vs decay "
                f"transform: {sgd_gap:.1e}; Adam + penalty vs AdamW: {adam_gap:.2g}",
        method=f"all params of a digits MLP 64-16-10 ({weights} weights, float64): one step of "
               f"optax.chain(regularize.weight_decay({rate}), optax.sgd({lr})) on a zero data "
               "gradient against gradient steps on the two penalties; then one step on a "
               "digits batch of SGD on loss + regularize.l2_penalty against the decay transform "
               "on the plain loss, and the same for Adam against AdamW.",
        numbers={"error_vs_squared_norm": err_square, "error_vs_norm": err_norm,
                 "weight_norm": size, "sgd_penalty_vs_decay": sgd_gap,
                 "adam_penalty_vs_adamw": adam_gap},
        threshold=f"holds if the step equals gradient descent on rate ||w|| (to {EXACT:g}); "
                  "caveat if it equals gradient descent on rate ||w||^2 / 2 only",
        caveat="" if verdict == HOLDS else
        ("Weight decay w <- (1 - lr rate) w is gradient descent on rate ||w||^2 / 2 (the squared "
         "norm), shrinking every weight in proportion; descent on the norm itself would move "
         "w by a fixed length lr rate along w / ||w||. The two agree only where ||w|| = 1. "
         "With SGD the penalty in the loss and the decay step coincide; with Adam they do not "
         "(the penalty's gradient is rescaled; AdamW decouples it)." if matches_square else
         "the decay step matched neither gradient step"))


@study("reg.dropout", SECTION, "introduce dropout that adds bernoulli noise to each neurons")
def dropout(ctx, rate=0.5, hidden=(256, 256), n_train=None, epochs=None, seeds=None):
    """An over-parameterised MLP on few digits with and without dropout after each hidden layer.

    ``rate=0.0`` makes the two arms the same network (the flip case).
    """
    ds = _digits(ctx.seed)
    key = ctx.key("reg.dropout")
    n_train = n_train or ctx.pick(200, 200, 300)
    seeds = seeds or ctx.pick(4, 8, 16)
    if seeds < 2:
        raise ValueError(f"reg.dropout: expected seeds >= 2 (a standard error), got {seeds}")
    arms = {"plain": _mlp(hidden), "dropout": _mlp(hidden, dropout=rate)}

    def fn(params, state, batch, step_key, train):
        x, y = batch
        total = 0.0
        for j, (name, m) in enumerate(arms.items()):
            keys = jax.random.split(jax.random.fold_in(step_key, j), seeds) if train else None

            def one(p, k, m=m):
                return losses.softmax_cross_entropy(m.apply(p, x, key=k, train=train)[0], y)

            total = total + (jnp.sum(jax.vmap(one)(params[name], keys)) if train else
                             jnp.sum(jax.vmap(lambda p: one(p, None))(params[name])))
        return total, state

    start = _init_stack(arms["plain"], jax.random.split(key, seeds), 64)
    # the same dense weights in both arms (the dropout arm has extra parameter-free layers)
    dense = [start[n] for n in arms["plain"].names if n.endswith("_dense")]
    with_dropout = {n: dense.pop(0) if n.endswith("_dense") else {}
                    for n in arms["dropout"].names}
    fit = jt.fit(jt.StatefulLoss(fn), {"plain": start, "dropout": with_dropout},
                 optax.adam(1e-3), (ds.x_train[:n_train], ds.y_train[:n_train]),
                 epochs=epochs or ctx.pick(300, 300, 400), batch_size=32,
                 key=jax.random.fold_in(key, 1), quiet=True)
    results, per_seed = {}, {}
    score = _scorer(arms["plain"])  # evaluation mode: dropout is the identity
    x_held = jnp.concatenate([ds.x_val, ds.x_test])  # nothing here is selected on val
    y_held = jnp.concatenate([ds.y_val, ds.y_test])
    for name in arms:
        p = fit.params[name]
        if name == "dropout":  # the same dense layers without the dropout layers
            p = dict(zip(arms["plain"].names, [p[n] for n in arms["dropout"].names
                                               if not n.endswith("_dropout")]))
        (train_acc, train_loss), (test_acc, test_loss) = jax.device_get(
            [score(p, ds.x_train[:n_train], ds.y_train[:n_train]), score(p, x_held, y_held)])
        per_seed[name] = {"accuracy_gap": train_acc - test_acc,
                          "loss_gap": test_loss - train_loss}
        results[name] = {"train_accuracy": float(train_acc.mean()),
                         "test_accuracy": float(test_acc.mean()),
                         "train_loss": float(train_loss.mean()),
                         "test_loss": float(test_loss.mean()),
                         **{gap: float(v.mean()) for gap, v in per_seed[name].items()}}

    def narrowing(gap):
        """How much dropout narrows ``gap``, paired by seed: mean and standard error."""
        d = per_seed["plain"][gap] - per_seed["dropout"][gap]
        return float(d.mean()), float(d.std(ddof=1) / np.sqrt(seeds))

    # the layer itself: Bernoulli(1 - rate) masks, survivors scaled by 1 / (1 - rate)
    h = jnp.ones((4096, 64), F32)
    dropped = nn.dropout(rate).apply({}, h, key=jax.random.fold_in(key, 2), train=rate > 0)[0]
    zero_fraction = float(jnp.mean(dropped == 0))
    mean_ratio = float(jnp.mean(dropped))
    plain, drop = results["plain"], results["dropout"]
    (acc_mean, acc_se), (loss_mean, loss_se) = narrowing("accuracy_gap"), narrowing("loss_gap")
    significant = acc_mean > 0 and acc_mean >= 2 * acc_se
    verdict = (HOLDS if significant and loss_mean > 0 else CAVEAT if acc_mean > 0 else FAILS)
    return Finding(
        verdict=verdict,
        summary=f"accuracy gap {plain['accuracy_gap']:.3f} -> {drop['accuracy_gap']:.3f} "
                f"(narrowed by {acc_mean:.4f} +- {acc_se:.4f} over {seeds} seeds), test-train "
                f"loss gap {plain['loss_gap']:.3f} -> {drop['loss_gap']:.3f} ({loss_mean:.3f} +- "
                f"{loss_se:.3f}); held-out accuracy {plain['test_accuracy']:.3f} -> "
                f"{drop['test_accuracy']:.3f}; the layer zeroes {zero_fraction:.3f} of the units "
                f"(rate {rate}), mean kept at {mean_ratio:.3f}",
        method=f"digits, {n_train} training examples, MLP 64-{'-'.join(map(str, hidden))}-10 "
               f"(ReLU) with and without nn.dropout({rate}) after each hidden layer (inverted "
               f"dropout: Bernoulli masks, survivors scaled by 1/(1-rate)), Adam 1e-3, batch 32, "
               f"{seeds} seeds, each seed's initial weights shared by both arms; gaps measured in "
               f"evaluation mode on the validation and test splits together; the narrowing is "
               f"paired by seed (mean +- standard error).",
        numbers=results | {"zero_fraction": zero_fraction, "mean_after_dropout": mean_ratio,
                           "accuracy_gap_narrowing": acc_mean, "accuracy_gap_narrowing_se": acc_se,
                           "loss_gap_narrowing": loss_mean, "loss_gap_narrowing_se": loss_se},
        threshold="holds if dropout narrows the train-test accuracy gap by at least two "
                  "standard errors (paired over seeds) and narrows the loss gap on average; "
                  "caveat if the accuracy gap narrows on average but less than that (or the loss "
                  "gap does not); does not hold if it does not narrow at all",
        caveat="" if verdict == HOLDS else
        ("dropout narrowed the accuracy gap but not the loss gap" if significant else
         f"dropout narrowed the accuracy gap by only {acc_mean:.4f} +- {acc_se:.4f}: within "
         f"the noise of {seeds} seeds on this small, easy problem" if verdict == CAVEAT else
         "dropout did not narrow the overfitting gap"))


@study("reg.prior-knowledge", SECTION,
       "Include prior knowledge in our model by removing features that do not contribute to the "
       "solution")
def prior_knowledge(ctx, removed="noise"):
    """Test accuracy with the useless columns zeroed (removed) against keeping them.

    ``removed="informative"`` zeroes the 16 most variable pixels instead (the flip case).
    """
    settings = dict(_sweep_settings(ctx), removed=removed)
    sweep = _decay_sweep(**settings)
    s = sweep["seeds"]
    zero = int(np.argmin(sweep["rates"]))
    kept = float(sweep["test_acc"][zero * s:(zero + 1) * s].mean())
    dropped = float(sweep["test_acc"][sweep["lane_removed"]].mean())
    gap_kept = float((sweep["train_acc"] - sweep["test_acc"])[zero * s:(zero + 1) * s].mean())
    gap_dropped = float((sweep["train_acc"] - sweep["test_acc"])[sweep["lane_removed"]].mean())
    gain = dropped - kept
    holds = gain >= 0.01
    what = ("the 64 noise columns" if removed == "noise" else
            "the 16 most variable pixels")
    return Finding(
        verdict=HOLDS if holds else FAILS,
        summary=f"removing {what}: test accuracy {kept:.3f} -> {dropped:.3f} "
                f"(train-test gap {gap_kept:.3f} -> {gap_dropped:.3f})",
        method="the weight-decay sweep's unpenalised lanes (reg.weight-decay): the MLP on "
               f"digits + 64 noise columns, against the same MLP with {what} set to 0 (removed: "
               "they get no gradient and carry no signal).",
        numbers={"test_accuracy_kept": kept, "test_accuracy_removed": dropped, "gain": gain,
                 "train_test_gap_kept": gap_kept, "train_test_gap_removed": gap_dropped},
        threshold="holds if removing the features raises test accuracy by at least 0.01",
        caveat="" if holds else
        "Removing features helps only when they do not contribute; removing informative ones "
        "costs accuracy.")


# --- transfer learning ---------------------------------------------------------------------------


def _transfer_target(name: str, x: jax.Array, y: jax.Array, shots: int | None, rng):
    """Inputs and labels 0-4 of a target task: ``(x (m, 64), y (m,))``.

    ``shots`` examples per class drawn with the numpy generator ``rng`` (all if None).
    """
    classes = (5, 6, 7, 8, 9) if name == "new_classes" else (0, 1, 2, 3, 4)
    xs, ys = models.select_classes(x, y, classes)
    if shots is not None:
        labels = np.asarray(ys)
        keep = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                               for c in range(len(classes))])
        xs, ys = xs[keep], ys[keep]
    if name == "rotated_30":  # the same digits seen by a tilted sensor
        xs = fast_jit(lambda a: models.rotate(a.reshape(-1, 8, 8, 1), jnp.pi / 6).reshape(a.shape))(xs)
    elif name == "inverted":
        xs = 1.0 - xs
    return xs, ys


TRANSFER_VARIANTS = ("frozen", "fine_tuned", "scratch")


@functools.lru_cache(maxsize=4)
def _transfer_program(num_targets: int, seeds: int) -> dict:
    """The transfer study's network, losses, optimisers and metrics, built once.

    An MLP body 64-64-32 (ReLU, ``"0_serial"``) under a 5-class head; the
    fine-tuning loss sums the variants' lanes ``(target, seed)`` (target-major,
    data lanes along axis 1); metric ``"<variant>:<target index>"`` is that
    variant's mean test accuracy on that target.
    """
    body = nn.serial(nn.dense(64), nn.activation("relu"), nn.dense(32), nn.activation("relu"))
    model = nn.serial(body, nn.dense(5))
    ce = _ce(model)
    per_lane = _summed(ce, in_axes=(1, 1))
    init = fast_jit(jax.vmap(lambda k: model.init(k, (-1, 64), F32)[1]))
    template = {v: jax.eval_shape(init, jax.random.split(jax.random.key(0), 2))
                for v in TRANSFER_VARIANTS}

    def loss(params, batch):
        return sum(per_lane(params[v], batch) for v in TRANSFER_VARIANTS)

    def metric(variant, t):
        def accuracy(params, batch):
            x, y = batch
            p = jax.tree.map(lambda a: a[t * seeds:(t + 1) * seeds], params[variant])
            logits = jax.vmap(lambda q, xi: model.apply(q, xi)[0], in_axes=(0, 1))(
                p, x[:, t * seeds:(t + 1) * seeds])
            return jnp.mean(jnp.argmax(logits, -1) == jnp.moveaxis(
                y[:, t * seeds:(t + 1) * seeds], 1, 0))
        return accuracy

    return {"model": model, "ce": _summed(ce), "init": init,
            "pretrain_optimizer": optax.adam(0.01), "loss": loss,
            "optimizer": models.freeze(optax.adam(0.01), template, "frozen/0_serial"),
            "metrics": {f"{v}:{t}": metric(v, t) for v in TRANSFER_VARIANTS
                        for t in range(num_targets)}}


@study("reg.transfer", SECTION,
       "Use transfer learning by hooking up your model to an already well trained model of a "
       "similar problem. The pre-trained model may not be well-suited to the second task if "
       "the two tasks are vastly different or the data distribution between the two tasks is "
       "very different. The potential for negative transfer. Transfer learning can lead to "
       "overfitting if the model is fine-tuned too much on the second task")
def transfer(ctx, targets=("rotated_30", "new_classes", "inverted"), shots=3):
    """Pretrain on digits 0-4; learn three 5-class targets from ``shots`` examples per class.

    Targets: ``rotated_30`` (digits 0-4 rotated by 30 degrees), ``new_classes``
    (digits 5-9) and ``inverted`` (0-4 as 1 - x). ``targets=("new_classes",)``
    alone is the flip case.
    """
    ds = _digits(ctx.seed)
    key = ctx.key("reg.transfer")
    k_pre, k_run, k_init, k_fine = jax.random.split(key, 4)
    seeds = ctx.pick(2, 5, 8)
    program = _transfer_program(len(targets), seeds)
    model = program["model"]
    x_src, y_src = models.select_classes(ds.x_train, ds.y_train, (0, 1, 2, 3, 4))
    pretrained = jt.fit(program["ce"], program["init"](k_pre[None]), program["pretrain_optimizer"],
                        (x_src, y_src), epochs=30, batch_size=32, key=k_run,
                        quiet=True).params
    pretrained = jax.tree.map(lambda a: a[0], pretrained)
    x_st, y_st = models.select_classes(ds.x_test, ds.y_test, (0, 1, 2, 3, 4))
    source_accuracy = float(metrics.accuracy(model.apply(pretrained, x_st)[0], y_st))

    rng = np.random.default_rng(ctx.seed)
    # lane = (target, seed), target-major; each lane its own few-shot draw (which
    # few examples are drawn moves the accuracies more than the initialisation)
    train = [_transfer_target(t, ds.x_train, ds.y_train, shots, rng) for t in targets
             for _ in range(seeds)]
    test = [_transfer_target(t, ds.x_test, ds.y_test, None, None) for t in targets]
    m_test = min(len(t[1]) for t in test)
    lanes = len(targets) * seeds
    train_data = tuple(jnp.stack([pair[i] for pair in train], 1) for i in range(2))
    test_data = tuple(jnp.repeat(jnp.stack([pair[i][:m_test] for pair in test], 1), seeds, axis=1)
                      for i in range(2))
    fresh = program["init"](jnp.tile(jax.random.split(k_init, seeds), len(targets)))
    stacked_pre = jax.tree.map(lambda a: jnp.broadcast_to(a, (lanes,) + a.shape), pretrained)
    start = models.transplant(stacked_pre, fresh, "0_serial")
    params0 = {"frozen": start, "fine_tuned": start, "scratch": fresh}
    history = jt.fit(program["loss"], params0, program["optimizer"], train_data,
                     epochs=ctx.pick(40, 150, 300), batch_size=shots * 5, key=k_fine,
                     val_data=test_data, metrics=program["metrics"], quiet=True).history
    history = {f"val_{v}:{t}": history[f"val_{v}:{i}"] for v in TRANSFER_VARIANTS
               for i, t in enumerate(targets)} | {"loss": history["loss"]}
    table = {t: {v: {"final": float(history[f"val_{v}:{t}"][-1]),
                     "peak": float(np.max(history[f"val_{v}:{t}"]))} for v in TRANSFER_VARIANTS}
             for t in targets}
    best_transfer = {t: max(table[t]["frozen"]["final"], table[t]["fine_tuned"]["final"])
                     for t in targets}
    gain = {t: best_transfer[t] - table[t]["scratch"]["final"] for t in targets}
    worst = {t: min(table[t]["frozen"]["final"], table[t]["fine_tuned"]["final"])
             - table[t]["scratch"]["final"] for t in targets}
    over = {t: table[t]["fine_tuned"]["peak"] - table[t]["fine_tuned"]["final"] for t in targets}
    helps = max(gain.values()) >= 0.05
    negative = min(worst.values()) <= -0.03
    overfits = max(over.values()) >= 0.02
    verdict = _verdict(helps, negative and overfits)
    figure = plot_lines(
        ctx, "reg_transfer", list(range(1, len(history["loss"]) + 1)),
        {f"{v} on {t}": history[f"val_{v}:{t}"].tolist() for t in targets[:2]
         for v in TRANSFER_VARIANTS}, xlabel="fine-tuning epoch",
        ylabel="target test accuracy", title=f"{shots} examples per class")
    return Finding(
        verdict=verdict,
        summary="target test accuracy frozen / fine-tuned / scratch: " + "; ".join(
            f"{t} {table[t]['frozen']['final']:.2f}/{table[t]['fine_tuned']['final']:.2f}/"
            f"{table[t]['scratch']['final']:.2f}" for t in targets)
        + f"; fine-tuned peak-to-final drop up to {max(over.values()):.3f}",
        method=f"an MLP body 64-64-32 (ReLU) pretrained with a head on digits 0-4 (source test "
               f"accuracy {source_accuracy:.3f}), transplanted (models.transplant) under fresh "
               f"heads and trained on {shots} examples per class of each target, frozen "
               "(models.freeze) or fine-tuned, against the same network from scratch; Adam "
               f"0.01, full batch, {seeds} seed(s) (each its own initialisation and draw of the "
               "few examples), all in one fit; accuracy on the targets' "
               "test digits after every epoch.",
        numbers={"targets": table, "transfer_minus_scratch_best": gain,
                 "transfer_minus_scratch_worst": worst, "fine_tuned_peak_minus_final": over,
                 "source_accuracy": source_accuracy},
        threshold="main: on some target the better transfer variant beats scratch by >= 0.05; "
                  "holds if also some transfer variant falls >= 0.03 below scratch (negative "
                  "transfer) and fine-tuning loses >= 0.02 from its peak (too much "
                  "fine-tuning), caveat otherwise",
        caveat="" if verdict == HOLDS else
        ((("no negative transfer seen; " if not negative else "")
          + ("fine-tuning longer did not lose accuracy from its peak (no over-fine-tuning "
             "seen here)" if not overfits else "")).strip("; ") if helps else
         "transfer did not beat training from scratch on these targets"),
        figures=[figure])


# --- adversarial attacks and the notes' four defences ------------------------------------------


ROBUST_VARIANTS = ("plain", "adversarial", "spectral", "gradient", "pca")


@functools.lru_cache(maxsize=4)
def _robust_models(seed: int, epochs: int, seeds: int, train_epsilon: float = 0.1,
                   spectral_rate: float = 0.05, gradient_rate: float = 1.0,
                   components: int = 16) -> dict:
    """Digits MLPs 64-64-10 trained plainly and with each of the notes' defences, in one fit.

    Variants (each for ``seeds`` initialisations): ``plain`` cross-entropy;
    ``adversarial`` (``adversarial.adversarial_loss``, FGSM at
    ``train_epsilon``, weight 0.5, Goodfellow et al. 2015); ``spectral``
    (``regularize.spectral_penalty`` at ``spectral_rate``, Yoshida & Miyato
    2017); ``gradient``: the input-gradient penalty on every pixel
    (``models.input_gradient_penalty`` at ``gradient_rate``, double
    back-propagation) to remove high local variations; ``pca``: the MLP on
    the top ``components`` principal components (:func:`_pca`),
    attacked through the projection. Adam 0.01, batches of 64.
    """
    ds = _digits(seed)
    key = jax.random.fold_in(jax.random.key(seed), 31)
    model = _mlp((64,))
    project = data.fit_pca(ds.x_train, components)
    ce = _ce(model)
    logits = _logits(model)  # one function object: the attacks compile once for all four
    apply = {name: logits for name in ROBUST_VARIANTS[:-1]}
    apply["pca"] = lambda p, x: model.apply(p, project(x))[0]
    pca_ce = adversarial.classifier_loss(apply["pca"])
    every_pixel = jnp.ones((64,), bool)
    parts = {
        "plain": ce,
        "adversarial": adversarial.adversarial_loss(ce, epsilon=train_epsilon, attack="fgsm"),
        "spectral": regularize.add_penalty(
            ce, lambda p: regularize.spectral_penalty(p, spectral_rate)[0]),
        "gradient": models.input_gradient_penalty(ce, every_pixel, gradient_rate),
        "pca": pca_ce,
    }

    def loss(params, batch):
        return sum(_summed(parts[name])(params[name], batch) for name in ROBUST_VARIANTS)

    init_keys = jax.random.split(jax.random.fold_in(key, 1), seeds)
    pixels = _init_stack(model, init_keys, 64)  # the same start for the four pixel models
    params0 = {name: pixels for name in ROBUST_VARIANTS[:-1]}
    params0["pca"] = _init_stack(model, init_keys, components)
    fit = jt.fit(loss, params0, optax.adam(0.01), (ds.x_train, ds.y_train), epochs=epochs,
                 batch_size=64, key=jax.random.fold_in(key, 2), quiet=True)
    return {"params": fit.params, "apply": apply, "model": model, "seeds": seeds,
            "x": ds.x_test, "y": ds.y_test}


def _robust_settings(ctx) -> dict:
    return dict(seed=ctx.seed, epochs=ctx.pick(10, 20, 40), seeds=ctx.pick(1, 2, 3))


@functools.lru_cache(maxsize=16)
def _robustness(settings: tuple, epsilon: float, attack: str,
                variants: tuple[str, ...] = ROBUST_VARIANTS) -> dict:
    """Clean and robust test accuracy (L-inf ``attack`` at ``epsilon``), means over seeds."""
    trained = _robust_models(**dict(settings))
    out = {}
    for name in variants:
        clean, robust = [], []
        for i in range(trained["seeds"]):
            result = adversarial.robust_accuracy(
                trained["apply"][name], _lane(trained["params"][name], i),
                (trained["x"], trained["y"]), epsilon=epsilon, attack=attack, num_steps=20)
            clean.append(float(result.clean))
            robust.append(float(result.robust))
        out[name] = {"clean": float(np.mean(clean)), "robust": float(np.mean(robust))}
    return out


def _robust_table(ctx, epsilons) -> tuple[dict, dict]:
    """PGD-20 results per epsilon and variant, and FGSM results of the plain model."""
    settings = tuple(_robust_settings(ctx).items())  # in order: the same lru_cache key
    pgd = {eps: _robustness(settings, eps, "pgd") for eps in epsilons}
    fgsm = {eps: _robustness(settings, eps, "fgsm", ("plain",))["plain"] for eps in epsilons}
    return pgd, fgsm


def _robust_figure(ctx, name, pgd, variants, title) -> str:
    eps = list(pgd)
    return plot_lines(ctx, name, [0.0] + eps,
                       {v: [pgd[eps[0]][v]["clean"]] + [pgd[e][v]["robust"] for e in eps]
                        for v in variants},
                       xlabel="L-inf radius epsilon", ylabel="PGD-20 robust test accuracy",
                       title=title)


@study("reg.local-variation", SECTION,
       "How to deal with adversarial attacks: search for high local variations in the function "
       "and remove them")
def local_variation(ctx, epsilons=(0.05, 0.1)):
    """The input-gradient penalty (double back-propagation) against the plain model."""
    pgd, _ = _robust_table(ctx, epsilons)
    trained = _robust_models(**_robust_settings(ctx))
    logits, x = trained["apply"]["plain"], trained["x"]

    @fast_jit
    def jacobian_norms(params):
        jac = jax.vmap(jax.jacrev(lambda xi: logits(params, xi[None])[0]))(x)
        return jnp.linalg.norm(jac, ord=2, axis=(-2, -1))

    variation = {v: float(np.mean([np.median(jacobian_norms(_lane(trained["params"][v], i)))
                                   for i in range(trained["seeds"])]))
                 for v in ("plain", "gradient")}
    eps = max(epsilons)
    gain = pgd[eps]["gradient"]["robust"] - pgd[eps]["plain"]["robust"]
    cost = pgd[eps]["plain"]["clean"] - pgd[eps]["gradient"]["clean"]
    smoother = variation["gradient"] <= 0.5 * variation["plain"]
    verdict = _verdict(smoother and gain >= 0.05, cost <= 0.03)
    figure = _robust_figure(ctx, "reg_local_variation", pgd, ("plain", "gradient"),
                            "input-gradient penalty")
    return Finding(
        verdict=verdict,
        summary=f"median ||d logits / dx||_2 on test {variation['plain']:.3g} -> "
                f"{variation['gradient']:.3g}; PGD accuracy at eps {eps} "
                f"{pgd[eps]['plain']['robust']:.3f} -> {pgd[eps]['gradient']['robust']:.3f} "
                f"(clean {pgd[eps]['plain']['clean']:.3f} -> {pgd[eps]['gradient']['clean']:.3f})",
        method="local variations removed by penalising the loss's input gradient on every "
               "pixel during training (models.input_gradient_penalty, rate 1: double "
               "back-propagation, Drucker & LeCun 1992; Ross & Doshi-Velez 2018), against the "
               "plain digits MLP of reg.adversarial. Local variation measured as the spectral "
               "norm of the logits' input Jacobian at each test example; PGD-20 robust accuracy.",
        numbers={"median_jacobian_norm": variation,
                 "pgd": {str(e): {v: t[v] for v in ("plain", "gradient")} for e, t in pgd.items()},
                 "robust_gain": gain, "clean_cost": cost},
        threshold="main: the median Jacobian norm at least halves and PGD accuracy rises "
                  "by >= 0.05 at the largest epsilon; holds if clean accuracy drops by <= 0.03, "
                  "caveat otherwise",
        caveat="" if verdict == HOLDS else
        (f"Removing the local variation costs {cost:.3f} clean accuracy here." if smoother and
         gain >= 0.05 else
         f"the penalty did not flatten the function (Jacobian norm {variation['plain']:.3g} -> "
         f"{variation['gradient']:.3g})" if not smoother else
         f"the penalty did not buy robustness at eps {eps} (gain {gain:.3f})"),
        figures=[figure])


@study("reg.adversarial", SECTION,
       "How to deal with adversarial attacks: generate adversarial attacks and make your model "
       "predict them correctly; use spectral norm regularization")
def adversarial_defences(ctx, epsilons=(0.05, 0.1)):
    """FGSM and PGD on a digits MLP; adversarial training and spectral-norm regularisation."""
    pgd, fgsm = _robust_table(ctx, epsilons)
    eps = max(epsilons)
    table = pgd[eps]
    clean = table["plain"]["clean"]
    drop_pgd, drop_fgsm = clean - table["plain"]["robust"], clean - fgsm[eps]["robust"]
    attacks = drop_pgd >= 0.3 and drop_fgsm >= 0.2
    gains = {v: table[v]["robust"] - table["plain"]["robust"] for v in ("adversarial", "spectral")}
    costs = {v: clean - table[v]["clean"] for v in ("adversarial", "spectral")}
    helps = {v: gains[v] >= 0.1 and costs[v] <= 0.05 for v in gains}
    verdict = (HOLDS if attacks and all(helps.values()) else
               CAVEAT if attacks and any(helps.values()) else FAILS)
    trained = _robust_models(**_robust_settings(ctx))
    lip = {v: float(np.mean([regularize.lipschitz_bound(trained["model"], _lane(
        trained["params"][v], i)) for i in range(trained["seeds"])])) for v in gains | {"plain": 0}}
    figure = _robust_figure(ctx, "reg_adversarial", pgd, ("plain", "adversarial", "spectral"),
                            "adversarial training and spectral-norm penalty")
    return Finding(
        verdict=verdict,
        summary=f"eps {eps}: clean {clean:.3f} -> FGSM {fgsm[eps]['robust']:.3f}, PGD "
                f"{table['plain']['robust']:.3f}; PGD accuracy with FGSM adversarial training "
                f"{table['adversarial']['robust']:.3f}, with the spectral-norm penalty "
                f"{table['spectral']['robust']:.3f}",
        method="digits MLP 64-64-10 (ReLU, Adam 0.01, batch 64), plain, trained on "
               "adversarial.adversarial_loss (FGSM eps 0.1, weight 0.5) and with "
               "regularize.spectral_penalty (rate 0.05); test accuracy under "
               "adversarial.robust_accuracy (L-inf, FGSM and PGD-20, pixels kept in [0, 1]), "
               "means over seeds; regularize.lipschitz_bound of each.",
        numbers={"pgd": {str(e): v for e, v in pgd.items()},
                 "fgsm_plain": {str(e): v for e, v in fgsm.items()},
                 "robust_gain_at_largest_eps": gains, "clean_cost": costs,
                 "lipschitz_bound": lip},
        threshold="attacks succeed if PGD cuts the plain model's accuracy by >= 0.3 and FGSM by "
                  ">= 0.2 at the largest epsilon; a defence helps if it raises PGD accuracy by "
                  ">= 0.1 at <= 0.05 clean cost; holds if both help, caveat if one does",
        caveat="" if verdict == HOLDS else
        (f"not every defence helped: {[v for v, ok in helps.items() if not ok]} (gains "
         f"{gains}); adversarial training targets the attack directly" if attacks else
         f"at eps {eps} the attacks barely change the predictions (drop {drop_pgd:.3f}): the "
         "claim needs a radius at which the model is vulnerable"),
        figures=[figure])


@study("reg.dim-reduction-adversarial", SECTION,
       "How to deal with adversarial attacks: dimensionality reduction")
def dim_reduction_adversarial(ctx, epsilons=(0.05, 0.1)):
    """The MLP on the top 16 PCA components (attacked through the projection) vs on pixels."""
    pgd, _ = _robust_table(ctx, epsilons)
    eps = max(epsilons)
    gain = pgd[eps]["pca"]["robust"] - pgd[eps]["plain"]["robust"]
    cost = pgd[eps]["plain"]["clean"] - pgd[eps]["pca"]["clean"]
    verdict = _verdict(gain >= 0.05, cost <= 0.03)
    figure = _robust_figure(ctx, "reg_dim_reduction_adversarial", pgd, ("plain", "pca"),
                            "MLP on 16 PCA components vs on 64 pixels")
    return Finding(
        verdict=verdict,
        summary=f"PGD accuracy at eps {eps}: pixels {pgd[eps]['plain']['robust']:.3f}, 16 PCA "
                f"components {pgd[eps]['pca']['robust']:.3f} (clean "
                f"{pgd[eps]['plain']['clean']:.3f} vs {pgd[eps]['pca']['clean']:.3f})",
        method="digits MLP on the 16 principal components of largest variance (from "
               "data.fit_whiten(method='pca')) against the same MLP on the 64 pixels "
               "(reg.adversarial); white-box "
               "PGD-20 on the pixels, through the projection.",
        numbers={"pgd": {str(e): {v: t[v] for v in ("plain", "pca")} for e, t in pgd.items()},
                 "robust_gain": gain, "clean_cost": cost},
        threshold="main: PGD accuracy rises by >= 0.05 at the largest epsilon; holds if clean "
                  "accuracy drops by <= 0.03, caveat otherwise",
        caveat="" if verdict == HOLDS else
        (f"the projection costs {cost:.3f} clean accuracy" if gain >= 0.05 else
         f"at eps {eps} the projection did not make the model more robust (gain {gain:.3f})"),
        figures=[figure])


# --- the notes' norms and inequalities -----------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _matrices(seed: int) -> dict[str, np.ndarray]:
    """Real float64 matrices: digits pixels (non-negative), standardised wine, a dense kernel."""
    key = jax.random.fold_in(jax.random.key(seed), 5)
    digits = data.load("digits", key=key, dtype=jnp.float64).x_train
    wine = data.load("wine", key=key, dtype=jnp.float64)
    wine_std = data.fit_standardize(wine.x_train)(wine.x_train)
    kernel = nn.dense(32).init(key, (-1, 64), jnp.float64)[1]["w"]
    return {"digits (n x 64)": np.asarray(digits), "standardised wine (n x 13)":
            np.asarray(wine_std), "dense kernel (64 x 32)": np.asarray(kernel)}


def _rel(a, b) -> float:
    return float(abs(a - b) / max(abs(b), 1e-300))


@study("reg.frobenius", SECTION, "Frobenius Norm ||M||_f = sqrt(sum_i sum_j |v_ij|^2)")
def frobenius(ctx, norm_fn=regularize.frobenius_norm):
    """``norm_fn`` (jdl's Frobenius norm) against three equivalent forms, and the bounds it gives.

    A different ``norm_fn`` (e.g. ``regularize.mixed_norm``) shows the check can fail.
    """
    errors, bound_ok, spectral_ok = {}, {}, {}
    rng = np.random.default_rng(ctx.seed)
    for name, m in _matrices(ctx.seed).items():
        value = float(norm_fn(m))
        svals = np.linalg.svd(m, compute_uv=False)
        forms = {"numpy": np.linalg.norm(m, "fro"), "sqrt(trace(M^T M))":
                 np.sqrt(np.trace(m.T @ m)), "sqrt(sum sigma^2)": np.sqrt(np.sum(svals ** 2))}
        errors[name] = max(_rel(value, f) for f in forms.values())
        x = rng.normal(size=(50, m.shape[1]))
        bound_ok[name] = bool(np.all(np.linalg.norm(x @ m.T, axis=1)
                                     <= value * np.linalg.norm(x, axis=1) * (1 + 1e-12)))
        rank = int(np.sum(svals > svals[0] * 1e-12))
        spectral_ok[name] = bool(svals[0] <= value * (1 + 1e-12)
                                 and value <= np.sqrt(rank) * svals[0] * (1 + 1e-12))
    worst = max(errors.values())
    bounds = all(bound_ok.values()) and all(spectral_ok.values())
    holds = worst < EXACT and bounds
    return Finding(
        verdict=HOLDS if holds else FAILS,
        summary=f"largest relative error against numpy / trace / singular values {worst:.1e}; "
                f"||Mx|| <= ||M||_F ||x|| and sigma_max <= ||M||_F <= sqrt(rank) sigma_max on "
                f"all {len(errors)} matrices: {bounds}",
        method="regularize.frobenius_norm on real float64 matrices (digits pixels, standardised "
               "wine, a dense kernel) against np.linalg.norm(M, 'fro'), sqrt(trace(M^T M)) and "
               "sqrt(sum of squared singular values); ||Mx||_2 <= ||M||_F ||x||_2 for 50 random "
               "x; sigma_max <= ||M||_F <= sqrt(rank) sigma_max.",
        numbers={"relative_errors": errors, "operator_bound_holds": bound_ok,
                 "spectral_sandwich_holds": spectral_ok},
        threshold=f"holds if every form agrees to {EXACT:g} and every bound holds",
        caveat="" if holds else "the function tested is not the Frobenius norm")


@study("reg.mixed-norm", SECTION, "Mixed norm ||M||_f = sqrt(sum_i (sum_j |v_ij|)^2)")
def mixed_norm(ctx, matrices=None):
    """The notes' mixed norm: jdl's against the formula, the norm axioms, the bound it gives.

    The notes label it ``||M||_f`` like the Frobenius norm; the verdict checks
    whether the two coincide. ``matrices`` (``{name: (rows, cols)}``) replaces the real ones.
    """
    matrices = _matrices(ctx.seed) if matrices is None else matrices
    rng = np.random.default_rng(ctx.seed)
    rows = {}
    for name, m in matrices.items():
        value = float(regularize.mixed_norm(m, inner_axis=1))
        formula = float(np.sqrt(np.sum(np.sum(np.abs(m), axis=1) ** 2)))
        fro = float(regularize.frobenius_norm(m))
        other, scale = rng.normal(size=m.shape), float(rng.normal())
        mixed = lambda a: float(regularize.mixed_norm(a, inner_axis=1))  # noqa: E731
        triangle = mixed(m + other) <= (mixed(m) + mixed(other)) * (1 + 1e-12)
        homogeneous = _rel(mixed(scale * m), abs(scale) * mixed(m)) < EXACT
        x = rng.uniform(-1, 1, size=(50, m.shape[1]))
        bound = bool(np.all(np.linalg.norm(x @ m.T, axis=1)
                            <= value * np.abs(x).max(1) * (1 + 1e-12)))
        h = m.shape[1]
        rows[name] = {"mixed": value, "frobenius": fro, "formula_error": _rel(value, formula),
                      "triangle": bool(triangle), "homogeneous": bool(homogeneous),
                      "inf_to_2_bound": bound, "mixed_over_frobenius": value / fro,
                      "sandwich": bool(fro <= value * (1 + 1e-12)
                                       and value <= np.sqrt(h) * fro * (1 + 1e-12))}
    is_norm = all(r["formula_error"] < EXACT and r["triangle"] and r["homogeneous"]
                  and r["inf_to_2_bound"] and r["sandwich"] for r in rows.values())
    same_as_frobenius = all(abs(r["mixed_over_frobenius"] - 1) < 1e-9 for r in rows.values())
    verdict = _verdict(is_norm, same_as_frobenius)
    ratios = [r["mixed_over_frobenius"] for r in rows.values()]
    return Finding(
        verdict=verdict,
        summary=f"a norm (formula error < {EXACT:g}, triangle inequality, homogeneity, "
                f"||Mx||_2 <= mixed ||x||_inf): {is_norm}; mixed / Frobenius = "
                f"{min(ratios):.2f}-{max(ratios):.2f}, so the shared label ||M||_f is a slip",
        method="regularize.mixed_norm(M, inner_axis=1) (j runs along a row, as in v_ij) on real "
               "float64 matrices against the formula; triangle inequality with a random "
               "matrix, homogeneity, ||M x||_2 <= mixed(M) ||x||_inf for 50 random x, "
               "||M||_F <= mixed(M) <= sqrt(h) ||M||_F; and the ratio to the Frobenius norm.",
        numbers=rows,
        threshold=f"main: formula to {EXACT:g} and every norm property and bound; holds if it "
                  "also equals the Frobenius norm (as its label ||M||_f says), caveat otherwise",
        caveat="" if verdict == HOLDS else
        ("The formula is a valid norm (the l2 norm of the rows' l1 norms; it bounds "
         "||Mx||_2 by ||x||_inf) but not the Frobenius norm, and the notes label both "
         "||M||_f: the mixed norm needs its own symbol. It is at least the Frobenius norm and "
         "at most sqrt(h) times it, equal to it only when each row has one non-zero entry."
         if is_norm else "the formula failed a norm property"))


@study("reg.cauchy-schwarz", SECTION, "Cauchy Schwarz Inequality |x . y| <= ||x|| ||y||; "
       "|x . y|^2 <= ||x||^2 ||y||^2")
def cauchy_schwarz(ctx, ord=2):
    """Every pair of real data rows, and the equality case ``y = c x``.

    ``ord`` is the norm's order (``numpy.linalg.norm``); only 2 makes it Cauchy–Schwarz.
    """
    pairs, worst, worst_sq = 0, 0.0, 0.0
    for name, m in _matrices(ctx.seed).items():
        rows = m[:300]
        norms = np.linalg.norm(rows, ord=ord, axis=1)
        keep = norms > 0
        rows, norms = rows[keep], norms[keep]
        dots = np.abs(rows @ rows.T)
        ratio = dots / np.outer(norms, norms)
        off = ~np.eye(len(rows), dtype=bool)
        worst = max(worst, float(ratio[off].max()))
        worst_sq = max(worst_sq, float((dots ** 2 / np.outer(norms ** 2, norms ** 2))[off].max()))
        pairs += int(off.sum()) // 2
    x = _matrices(ctx.seed)["standardised wine (n x 13)"][0]
    equality = float(abs(x @ (-2.5 * x)) / (np.linalg.norm(x, ord) * np.linalg.norm(-2.5 * x, ord)))
    holds = worst <= 1 + 1e-12 and worst_sq <= 1 + 1e-12
    return Finding(
        verdict=HOLDS if holds else FAILS,
        summary=f"largest |x.y| / (||x|| ||y||) over {pairs} pairs of data rows: {worst:.4f} "
                f"(squared form {worst_sq:.4f}); y = -2.5 x gives {equality:.12f}",
        method=f"all pairs among the first 300 rows of digits, standardised wine and a dense "
               f"kernel (float64), norm order {ord}; equality case y = -2.5 x.",
        numbers={"pairs": pairs, "largest_ratio": worst, "largest_squared_ratio": worst_sq,
                 "parallel_ratio": equality, "norm_order": str(ord)},
        threshold="holds if no ratio exceeds 1 (1e-12 rounding allowed), in both forms",
        caveat="" if holds else
        f"with the order-{ord} norm the inequality fails: Cauchy–Schwarz is about the Euclidean "
        "norm of the dot product (Hölder gives |x.y| <= ||x||_1 ||y||_inf instead)")


@study("reg.mixed-norm-bound", SECTION,
       "Some inequality proven by induction (sum_j |v_ij|)^2 <= h sum_j |v_ij|^2; using Cauchy "
       "(sum_j 1*|v_ij|)^2 <= sum_j 1^2 sum_j |v_ij|^2, |1.v|^2 <= ||1||^2 ||v||^2")
def mixed_norm_bound(ctx, h_offset=0):
    """The row inequality on every row of real matrices, its equality case, and the proof step.

    ``h`` is the row length; ``h_offset`` shifts it (``-1`` is a wrong constant, the flip case).
    """
    worst, gap, rows_checked, mixed_signs = 0.0, 0.0, 0, 0
    sandwich = True
    for name, m in _matrices(ctx.seed).items():
        h = m.shape[1] + h_offset
        absm = np.abs(m)
        lhs = absm.sum(1) ** 2
        rhs = h * (absm ** 2).sum(1)
        ones = np.ones(m.shape[1])
        # the notes' Cauchy step with the ones vector: (1 . |v|)^2 <= ||1||^2 |||v|||^2
        step_lhs, step_rhs = (absm @ ones) ** 2, (ones @ ones) * (absm ** 2).sum(1)
        gap = max(gap, float(np.max(np.abs(step_lhs - lhs) / np.maximum(lhs, 1e-300))),
                  float(np.max(np.abs(step_rhs - rhs) / np.maximum(rhs, 1e-300)))
                  if h_offset == 0 else 0.0)
        nonzero = rhs > 0
        worst = max(worst, float((lhs[nonzero] / rhs[nonzero]).max()))
        rows_checked += int(nonzero.sum())
        mixed_signs += int(np.sum((m > 0).any(1) & (m < 0).any(1)))
        sandwich &= bool(float(regularize.mixed_norm(m, inner_axis=1))
                         <= np.sqrt(h) * float(regularize.frobenius_norm(m)) * (1 + 1e-12))
    equal_row = np.array([[1.0, -1.0, 1.0, -1.0]])
    tight = float((np.abs(equal_row).sum() ** 2) / ((4 + h_offset) * (equal_row ** 2).sum()))
    holds = max(worst, tight) <= 1 + 1e-12 and sandwich
    return Finding(
        verdict=HOLDS if holds else FAILS,
        summary=f"largest (sum|v|)^2 / (h sum v^2) over {rows_checked} rows: {worst:.3f} "
                f"(equal-magnitude row: {tight:.3f}); the Cauchy step with the ones vector gives "
                f"the same two sides (relative difference {gap:.1e}); mixed <= sqrt(h) Frobenius: "
                f"{sandwich}",
        method="every row of digits, standardised wine and a dense kernel (float64), h the row "
               "length; the notes' step (1.|v|)^2 <= ||1||^2 |||v|||^2 computed separately; the "
               "row [1, -1, 1, -1] for equality.",
        numbers={"rows": rows_checked, "largest_ratio": worst, "equal_row_ratio": tight,
                 "cauchy_step_difference": gap, "rows_with_mixed_signs": mixed_signs,
                 "h_offset": h_offset},
        threshold="holds if no row (the real ones and the equal-magnitude one) has a ratio "
                  "above 1 (1e-12 rounding allowed) and mixed(M) <= sqrt(h) ||M||_F on every "
                  "matrix",
        caveat="" if holds else
        "with a constant below the row length h the bound fails on rows of equal magnitudes; "
        "the constant h is the best possible (Cauchy–Schwarz with the ones vector)")
