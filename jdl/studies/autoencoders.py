"""Studies of the notes' Auto-Encoders section: sparse, denoising, convolutional, U-Net,
anomaly and rotation claims, and the notes' sparsity check.

Every model is a :mod:`jdl.models` auto-encoder trained on digits (8x8 images
in [0, 1]) with :func:`jdl.train.fit` and the :mod:`jdl.models` objectives.
Models shared by several studies (the plain and the sparse dense auto-encoder)
are trained once per run (cached on the seed and the training settings); the
variants compared in a study share their initial weights and minibatch order,
so they differ only in the objective.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl import data, losses, models
from jdl import train as jt
from jdl.studies.registry import CAVEAT, FAILS, HOLDS, UNTESTABLE, Context, Finding, study

SECTION = "Auto-Encoders"
F32 = jnp.float32
SHAPE = (8, 8, 1)
CODE = 16           # dense code size h: 64 pixels -> 16 numbers
LR = 3e-3
BATCH = 32
NOTES_LAM = 0.5     # the notes' get_squared_loss_with_sparisty
NOTES_NOISE = 0.1   # the notes' get_squared_loss_denoising


def _epochs(ctx, tiny=10, quick=40, full=150) -> int:
    return ctx.pick(tiny, quick, full)


@functools.lru_cache(maxsize=None)
def _digits(seed: int) -> data.Dataset:
    """Digits as NHWC images ``(n, 8, 8, 1)``, split 60/20/20 from the run's seed."""
    return data.load("digits", images=True, key=Context(seed=seed).key("ae.digits"), dtype=F32)


def _fit(model, objective, x, seed: int, epochs: int, lr: float = LR, run: int = 0):
    """Train ``model`` on images ``x``; every variant starts from the same weights and order.

    ``run > 0`` draws other initial weights and another order (a repeat of the run).
    """
    keys = Context(seed=seed)
    k_init, k_fit = keys.key("ae.init"), keys.key("ae.fit")
    if run:
        k_init, k_fit = jax.random.fold_in(k_init, run), jax.random.fold_in(k_fit, run)
    _, params, _ = model.init(k_init, (-1, *x.shape[1:]), F32)
    result = jt.fit(objective, params, optax.adam(lr), x, epochs=epochs, batch_size=BATCH,
                    key=k_fit, model_state={}, quiet=True)
    return result.params


def _weight_matrices(params):
    return {"V": params["encoder"]["1_dense"]["w"], "W": params["decoder"]["0_dense"]["w"]}


def _dense(seed: int, epochs: int, *, lam: float = 0.0, noise: float = 0.0,
           max_angle: float = 0.0, lam_w: float = 0.0, classes=None, activation: str = "relu",
           run: int = 0):
    """The notes' dense auto-encoder (code 16, relu) trained with one of the notes' objectives.

    ``lam``: L1 sparsity weight; ``noise``: denoising input noise; ``max_angle``:
    random-rotation augmentation; ``lam_w``: weight restriction on ``V`` and
    ``W``; ``classes``: train only on these digit classes; ``activation``: the
    code's; ``run``: a repeat with other initial weights and order. Cached: the
    same settings train once per run.
    """
    classes = None if classes is None else tuple(int(c) for c in classes)
    return _dense_cached(int(seed), int(epochs), float(lam), float(noise), float(max_angle),
                         float(lam_w), classes, activation, int(run))


@functools.lru_cache(maxsize=None)
def _dense_cached(seed, epochs, lam, noise, max_angle, lam_w, classes, activation, run):
    ds = _digits(seed)
    x = ds.x_train
    if classes is not None:
        x = x[np.isin(np.asarray(ds.y_train), classes)]
    model = models.dense_autoencoder(SHAPE, CODE, activation=activation)
    if noise:
        objective = models.denoising_objective(model, noise)
    else:
        objective = models.reconstruction_objective(model, lam)
        if lam_w:
            sparse = objective

            def objective(params, batch):
                return sparse(params, batch) + losses.weight_restriction(
                    _weight_matrices(params), lam_w)
        if max_angle:
            objective = models.rotation_objective(objective, max_angle)
    return model, _fit(model, objective, x, seed, epochs, run=run)


def _error(model, params, x) -> float:
    """The notes' reconstruction cost ``sum (x - x_rec)^2 / N``."""
    return float(losses.reconstruction(x, model.apply(params, x)[0]))


def _code_shift(model, params, x, x_changed, key) -> float:
    """How far the codes move under a change of the input, relative to the code spread.

    ``mean ||z(x) - z(x_changed)|| / mean ||z(x) - z(x')||`` with ``x'`` another
    example (a random pairing): 0 is a perfectly invariant code, 1 a change
    as large as that between two different digits. Scale-free, so it compares
    models whose codes have different magnitudes.
    """
    z = models.encode(model, params, x).reshape(x.shape[0], -1)
    z_changed = models.encode(model, params, x_changed).reshape(x.shape[0], -1)
    other = jnp.roll(z[jax.random.permutation(key, x.shape[0])], 1, axis=0)
    spread = jnp.linalg.norm(z - other, axis=1).mean()
    return float(jnp.linalg.norm(z - z_changed, axis=1).mean() / spread)


def _image_rows(ctx, name, rows: dict, title: str) -> str:
    """A grid of digits, one labelled row per entry of ``rows`` (each ``(n, 8, 8, 1)``)."""
    import matplotlib.pyplot as plt

    n = min(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(0.8 * n + 1.2, 0.85 * len(rows) + 0.4),
                             squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.asarray(images[c, :, :, 0]), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return ctx.save_figure(fig, name)


# --- sparse codes, the sparsity check and the loss terms --------------------------------------


@study("ae.sparse", SECTION,
       "def get_squared_loss_with_sparisty(x, model): lam=0.5; ... rec = torch.sum((x - x_rec) "
       "** 2); # Sparsity term sp = torch.sum(torch.abs(z)); return (rec + lam * sp) / "
       "x.shape[0] (the sparsity term gives sparse codes)")
def sparse_codes(ctx, lam=NOTES_LAM, min_gain=0.1):
    """The L1 term's effect on the code: zero units overall and among the units in use.

    A relu unit that is zero on every test digit is dead, not sparse; the
    fraction of zeros among the live units (active on some test digit) is the
    per-example sparsity.
    """
    seed, epochs = ctx.seed, _epochs(ctx)
    ds = _digits(seed)
    plain_model, plain = _dense(seed, epochs)
    model, sparse = _dense(seed, epochs, lam=float(lam))
    codes = {"plain": np.asarray(models.encode(plain_model, plain, ds.x_test)),
             "sparse": np.asarray(models.encode(model, sparse, ds.x_test))}
    numbers = {"lam": lam, "epochs": epochs,
               "reconstruction_plain": _error(plain_model, plain, ds.x_test),
               "reconstruction_sparse": _error(model, sparse, ds.x_test)}
    for name, z in codes.items():
        live = (z > 0).any(0)
        numbers[f"zero_fraction_{name}"] = float(models.sparsity(z))
        numbers[f"dead_units_{name}"] = int((~live).sum())
        numbers[f"zero_fraction_live_{name}"] = float(models.sparsity(z[:, live]))
    gain = numbers["zero_fraction_sparse"] - numbers["zero_fraction_plain"]
    live_gain = numbers["zero_fraction_live_sparse"] - numbers["zero_fraction_live_plain"]
    numbers.update(gain=gain, live_gain=live_gain)
    verdict = (HOLDS if gain >= min_gain and live_gain >= min_gain else
               CAVEAT if gain >= min_gain else FAILS)

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6.5, 2.6), sharey=True)
    for ax, name, label in ((axes[0], "plain", "lam = 0"), (axes[1], "sparse", f"lam = {lam}")):
        ax.imshow(codes[name][:40].T > 0, cmap="Greys", aspect="auto", interpolation="nearest")
        ax.set_title(f"{label}: {numbers[f'zero_fraction_{name}']:.0%} zeros, "
                     f"{numbers[f'dead_units_{name}']} dead units", fontsize=8)
        ax.set_xlabel("test digit")
    axes[0].set_ylabel("code unit (black: active)")
    figure = ctx.save_figure(fig, "ae_sparse_codes")
    return Finding(
        verdict=verdict,
        summary=f"zero code units on test digits {numbers['zero_fraction_plain']:.0%} -> "
                f"{numbers['zero_fraction_sparse']:.0%} with the L1 term (lam={lam}); among "
                f"live units {numbers['zero_fraction_live_plain']:.0%} -> "
                f"{numbers['zero_fraction_live_sparse']:.0%}; reconstruction cost "
                f"{numbers['reconstruction_plain']:.2f} -> {numbers['reconstruction_sparse']:.2f}",
        method=f"the notes' dense auto-encoder (64 -> {CODE} relu -> 64) on digits, trained "
               f"{epochs} epochs (adam {LR}, batch {BATCH}) with the reconstruction cost alone "
               "and with + lam * sum|z| (models.reconstruction_objective); on the test digits "
               "the fraction of exactly zero code units (models.sparsity), the dead units (zero "
               "on every digit) and the fraction of zeros among the live units.",
        numbers=numbers,
        threshold=f"holds if the L1 term raises the fraction of zeros by >= {min_gain:g}, both "
                  "overall and among the live units; caveat if only overall (units die rather "
                  "than codes becoming sparse)",
        caveat="" if verdict == HOLDS else
        "The L1 term raises the count of zero units mostly by killing units (dead for every "
        "input), not by making each example's code sparse." if verdict == CAVEAT else
        "The L1 term did not make the code noticeably sparser than relu alone.",
        figures=[figure])


@study("ae.sparsity-check", SECTION,
       "def sparsitycheck(x, model): z = model.encode(x); count = z[(z==0)]; "
       "return count.shape[0]/z.shape[0]")
def sparsity_check(ctx, units=None):
    """The notes' formula against the fraction of zero code units (``models.sparsity``).

    ``units`` keeps only the first ``units`` code units (``units=1``: a one-unit
    code, where the notes' formula is right).
    """
    seed, epochs = ctx.seed, _epochs(ctx)
    ds = _digits(seed)
    model, params = _dense(seed, epochs, lam=NOTES_LAM)
    z = np.asarray(models.encode(model, params, ds.x_test), np.float64)
    if units is not None:
        z = z[:, :units]
    count = z[(z == 0)]                       # the notes' code, verbatim
    notes_value = count.shape[0] / z.shape[0]
    fraction = float(models.sparsity(z))
    per_example = float((z == 0).sum(1).mean())
    agrees = abs(notes_value - fraction) <= 1e-12
    return Finding(
        verdict=HOLDS if agrees else FAILS,
        summary=f"notes' sparsitycheck = {notes_value:.3g}, the fraction of zero units is "
                f"{fraction:.3g} (the notes' number = fraction x {z.shape[1]} code units)",
        method=f"codes of {z.shape[0]} test digits ({z.shape[1]} units) from the sparse dense "
               f"auto-encoder (lam={NOTES_LAM}); the notes' count.shape[0] / z.shape[0] against "
               "the number of zeros / z.size.",
        numbers={"notes_value": notes_value, "zero_fraction": fraction,
                 "zeros_per_example": per_example, "code_units": int(z.shape[1]),
                 "batch": int(z.shape[0])},
        threshold="holds if the notes' number equals the fraction of zero units (to 1e-12)",
        caveat="" if agrees else
        "count.shape[0] / z.shape[0] divides the number of zeros by the batch size: it is the "
        "mean number of zero units per example (between 0 and the code size), not a fraction. "
        "Divide by z.numel() (or z.size) for the fraction of zero units.")


@study("ae.loss-terms", SECTION,
       "Loss function for encoders is the reconstruction cost + sparsity term + Weight "
       "restriction")
def loss_terms(ctx, lam=NOTES_LAM, lam_w=3e-3, scale=10.0, activation="relu"):
    """Why the weight restriction: without it the sparsity term can be evaded by rescaling.

    For a relu code, ``V, b -> V/c, b/c`` and ``W -> c W`` leave every
    reconstruction unchanged and divide ``sum |z|`` by ``c``; training with
    the sparsity term alone therefore shrinks the code and inflates the
    decoder. Measured: the rescaling in float64, and the decoder norm after
    training with the reconstruction cost, + sparsity, + sparsity + weight
    restriction (``jdl.losses.weight_restriction`` on ``V`` and ``W``).
    ``activation`` replaces the code's relu (``"sigmoid"``: no rescaling
    symmetry).
    """
    seed, epochs = ctx.seed, _epochs(ctx)
    ds = _digits(seed)
    model, plain = _dense(seed, epochs, activation=activation)
    _, sparse = _dense(seed, epochs, lam=lam, activation=activation)
    _, restricted = _dense(seed, epochs, lam=lam, lam_w=lam_w, activation=activation)
    x = ds.x_test.astype(jnp.float64)
    p64 = jax.tree.map(lambda a: a.astype(jnp.float64), sparse)
    scaled = jax.tree.map(lambda a: a, p64)
    scaled["encoder"]["1_dense"] = {k: v / scale for k, v in p64["encoder"]["1_dense"].items()}
    scaled["decoder"]["0_dense"] = {"w": p64["decoder"]["0_dense"]["w"] * scale,
                                    "b": p64["decoder"]["0_dense"]["b"]}
    rec, rec_scaled = model.apply(p64, x)[0], model.apply(scaled, x)[0]
    rescale_error = float(jnp.linalg.norm(rec - rec_scaled) / jnp.linalg.norm(rec))
    l1 = float(jnp.abs(models.encode(model, p64, x)).sum(1).mean())
    l1_scaled = float(jnp.abs(models.encode(model, scaled, x)).sum(1).mean())

    def norms(params):
        z = models.encode(model, params, ds.x_test)
        return (float(jnp.linalg.norm(params["decoder"]["0_dense"]["w"])),
                float(jnp.abs(z).sum(1).mean()), _error(model, params, ds.x_test))

    (w_plain, l1_plain, e_plain), (w_sparse, l1_sparse, e_sparse), (w_rest, l1_rest, e_rest) = (
        norms(plain), norms(sparse), norms(restricted))
    degenerate = rescale_error < 1e-10 and abs(l1_scaled * scale - l1) <= 1e-9 * l1
    inflation = w_sparse / w_plain
    restrained = w_rest / w_sparse
    holds = degenerate and inflation >= 1.2 and restrained <= 0.8
    verdict = HOLDS if holds else CAVEAT if degenerate else FAILS
    return Finding(
        verdict=verdict,
        summary=f"rescaling V/{scale:g}, {scale:g}W changes the reconstructions by "
                f"{rescale_error:.0e} (relative) and divides sum|z| by {l1 / l1_scaled:.3g}; "
                "decoder norm |W| "
                f"{w_plain:.1f} (recon only) -> {w_sparse:.1f} (+ sparsity) -> {w_rest:.1f} "
                "(+ weight restriction)",
        method=f"dense auto-encoder (code {CODE}, {activation}) on digits, {epochs} epochs each: "
               f"reconstruction only; + lam sum|z| (lam={lam}); + lam sum|z| + lam_w "
               f"(|V|^2 + |W|^2) (lam_w={lam_w}). The rescaling is applied to the sparse model "
               "in float64.",
        numbers={"rescale_relative_change": rescale_error, "l1_code": l1,
                 "l1_code_rescaled": l1_scaled, "decoder_norm_plain": w_plain,
                 "decoder_norm_sparse": w_sparse, "decoder_norm_restricted": w_rest,
                 "l1_plain": l1_plain, "l1_sparse": l1_sparse, "l1_restricted": l1_rest,
                 "reconstruction_plain": e_plain, "reconstruction_sparse": e_sparse,
                 "reconstruction_restricted": e_rest, "inflation": inflation,
                 "restrained": restrained},
        threshold="holds if the rescaling is exact (< 1e-10), the sparsity term alone inflates "
                  "the decoder norm by >= 1.2x and the weight restriction takes back >= 20% of "
                  "it; caveat if only the rescaling degeneracy shows",
        caveat="" if verdict == HOLDS else
        "The rescaling degeneracy is exact (so a sparsity term needs a weight restriction to "
        "mean anything), but in this training budget the sparsity term did not visibly inflate "
        "the decoder, or the restriction did not restrain it." if verdict == CAVEAT else
        f"No rescaling degeneracy for a {activation} code: scaling V down and W up changes the "
        "reconstructions, so the sparsity term cannot be evaded this way.")


def _probe_accuracy(train_x, train_y, test_x, test_y) -> float:
    """Linear-probe accuracy: a ridge classifier (least squares on one-hot labels)."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0))
    probe.fit(np.asarray(train_x).reshape(len(train_x), -1), np.asarray(train_y))
    return float(probe.score(np.asarray(test_x).reshape(len(test_x), -1), np.asarray(test_y)))


@study("ae.sparse-uses", SECTION,
       "Sparse encoding used for: Compression, Correlating data, disentangling components, "
       "extracting high level semantic features")
def sparse_uses(ctx):
    """A list of uses, not a property; nearest reading: are sparse codes better features?"""
    seed, epochs = ctx.seed, _epochs(ctx)
    ds = _digits(seed)
    accuracies, active = {}, {}
    accuracies["pixels (64)"] = _probe_accuracy(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    for label, lam in (("plain code", 0.0), ("sparse code", NOTES_LAM)):
        model, params = _dense(seed, epochs, lam=lam)
        z_tr = models.encode(model, params, ds.x_train)
        z_te = models.encode(model, params, ds.x_test)
        accuracies[f"{label} ({CODE})"] = _probe_accuracy(z_tr, ds.y_train, z_te, ds.y_test)
        active[label] = float((np.asarray(z_te) > 0).sum(1).mean())
    sparse_acc, plain_acc = accuracies[f"sparse code ({CODE})"], accuracies[f"plain code ({CODE})"]
    return Finding(
        verdict=UNTESTABLE,
        summary=f"nearest reading (semantic features): linear-probe digit accuracy "
                f"{sparse_acc:.1%} from the sparse code ({active['sparse code']:.1f} active "
                f"units), {plain_acc:.1%} from the plain code, {accuracies['pixels (64)']:.1%} "
                "from the pixels",
        method=f"dense auto-encoders (code {CODE}) trained {epochs} epochs on digits without and "
               f"with the L1 term (lam={NOTES_LAM}); a linear probe (scikit-learn ridge "
               "classifier on standardised inputs) trained on the training codes, scored on "
               "the test codes.",
        numbers={"probe_accuracy": accuracies, "active_units_per_example": active},
        threshold="not testable as stated: a list of uses with no criterion",
        caveat="A list of applications, not a checkable property: 'correlating data' and "
               "'disentangling components' have no measurable definition here (no ground-truth "
               "factors in the embedded data). Nearest testable reading, 'extracting high level "
               "semantic features': how well a linear probe reads the digit class from the "
               "code, reported above (compression is measured in ae.uses).")


@study("ae.uses", SECTION,
       "can be used for anomaly detection and video compression and segmentation")
def uses(ctx):
    """No video or segmentation data are embedded; nearest reading: image compression vs PCA."""
    seed, epochs = ctx.seed, _epochs(ctx)
    ds = _digits(seed)
    model, params = _dense(seed, epochs)
    ae_error = _error(model, params, ds.x_test)
    x_tr = np.asarray(ds.x_train, np.float64).reshape(len(ds.x_train), -1)
    x_te = np.asarray(ds.x_test, np.float64).reshape(len(ds.x_test), -1)
    mean = x_tr.mean(0)
    _, _, vt = np.linalg.svd(x_tr - mean, full_matrices=False)
    basis = vt[:CODE]
    x_pca = (x_te - mean) @ basis.T @ basis + mean
    pca_error = float(((x_te - x_pca) ** 2).sum(1).mean())
    ratio = ae_error / pca_error
    return Finding(
        verdict=UNTESTABLE,
        summary=f"nearest reading (compression): 64 pixels -> {CODE} numbers, test "
                f"reconstruction cost {ae_error:.2f} for the auto-encoder vs {pca_error:.2f} for "
                f"PCA-{CODE} (ratio {ratio:.2f}); anomaly detection: see ae.anomaly",
        method=f"the dense auto-encoder (code {CODE}, relu) trained {epochs} epochs on digits "
               f"against the best linear code of the same size, PCA with {CODE} components "
               "fitted on the training digits; the notes' reconstruction cost on the test digits.",
        numbers={"autoencoder_error": ae_error, "pca_error": pca_error, "ratio": ratio,
                 "code": CODE, "pixels": 64},
        threshold="not testable as stated: no video or segmentation data",
        caveat="jdl embeds no video and no segmentation masks, so video compression and "
               "segmentation cannot be measured; anomaly detection is tested in ae.anomaly. "
               "Nearest testable reading, compression of images: the code's reconstruction "
               "cost against PCA with as many components (the optimal linear code).")


# --- denoising and rotations ------------------------------------------------------------------


@study("ae.denoising", SECTION,
       "We use Noise at the start of encoders to make it invariant to small irrelevant "
       "variations")
def denoising(ctx, noise=NOTES_NOISE, test_noise=NOTES_NOISE, invariant_ratio=0.5, runs=None):
    """Code shift under small input noise: denoising against plain auto-encoder.

    Repeated over ``runs`` pairs of models (each pair shares initial weights and
    order): one pair's ratio moves by about 0.1 with the training run alone.
    """
    seed, epochs = ctx.seed, _epochs(ctx)
    runs = runs or ctx.pick(3, 6, 8)
    if runs < 2:
        raise ValueError(f"ae.denoising: expected runs >= 2 (a standard error), got {runs}")
    ds = _digits(seed)
    key = ctx.key("ae.denoising")
    k_noise, k_pairs = jax.random.split(key)
    x = ds.x_test
    x_noisy = x + test_noise * jax.random.normal(k_noise, x.shape, x.dtype)

    def pair(run):
        plain = _dense(seed, epochs, run=run)
        return plain, (_dense(seed, epochs, noise=float(noise), run=run) if noise else plain)

    shifts = np.array([[_code_shift(*m, x, x_noisy, k_pairs) for m in pair(run)]
                       for run in range(runs)])
    # the first run's pair (cached): growth with the noise, reconstructions of the clean digit
    (plain_model, plain), (model, denoiser) = pair(0)
    growth = _code_shift(model, denoiser, x, 2 * x_noisy - x, k_pairs) / shifts[0, 1]
    clean_plain = float(losses.reconstruction(x, plain_model.apply(plain, x_noisy)[0]))
    clean_denoise = float(losses.reconstruction(x, model.apply(denoiser, x_noisy)[0]))
    passed = (clean_plain - _error(plain_model, plain, x)) / float(
        losses.reconstruction(x, x_noisy))   # the noise energy the plain AE lets through
    ratios = shifts[:, 1] / shifts[:, 0]
    ratio, ratio_se = float(ratios.mean()), float(ratios.std(ddof=1) / np.sqrt(runs))
    shift_plain, shift_denoise = (float(v) for v in shifts.mean(0))
    less = ratio + 2 * ratio_se < 1
    verdict = HOLDS if ratio <= invariant_ratio else CAVEAT if less else FAILS
    return Finding(
        verdict=verdict,
        summary=f"code shift under noise {test_noise} (relative to the distance between two "
                f"digits' codes): {shift_plain:.3f} plain, {shift_denoise:.3f} denoising "
                f"(ratio {ratio:.2f} +- {ratio_se:.2f} over {runs} runs); clean digit from the "
                f"noisy one: error {clean_plain:.2f} plain, {clean_denoise:.2f} denoising",
        method=f"dense auto-encoders (code {CODE}) trained {epochs} epochs on digits, plainly "
               f"and with models.denoising_objective (input + {noise} * N(0, 1)), {runs} runs "
               f"(each pair from the same initial weights and order); on test digits "
               f"x + {test_noise} eps: mean ||z(x) - z(x + noise)|| / mean ||z(x) - z(x')|| "
               "(x' another digit), the ratio denoising / plain per run (mean +- standard "
               "error); for the first run, the growth of the denoising code's shift when the "
               "same noise is doubled and the error of reconstructing the clean x from the noisy "
               "input.",
        numbers={"code_shift_plain": shift_plain, "code_shift_denoising": shift_denoise,
                 "ratio": ratio, "ratio_se": ratio_se, "ratios": ratios.tolist(),
                 "shift_growth_when_noise_doubles": growth,
                 "clean_from_noisy_error_plain": clean_plain,
                 "clean_from_noisy_error_denoising": clean_denoise,
                 "noise_passed_by_plain": passed, "train_noise": noise,
                 "test_noise": test_noise, "runs": runs},
        threshold=f"holds if the denoising code moves at most {invariant_ratio:g}x as much as "
                  "the plain one (mean ratio over the runs); caveat if the ratio is below 1 by "
                  "more than two standard errors (less sensitive, not invariant)",
        caveat="" if verdict == HOLDS else
        f"Training with input noise makes the code less sensitive to small noise (its shift "
        f"falls to {ratio:.2f}x the plain one), not invariant: doubling the noise still moves "
        f"the denoising code {growth:.2f}x as far." + (
            "" if clean_denoise < clean_plain else
            f" At this noise level it does not even reconstruct the clean digit from the noisy "
            f"one better than the plain auto-encoder ({clean_denoise:.2f} vs {clean_plain:.2f}): "
            f"the plain bottleneck already lets only {passed:.0%} of the noise energy through.")
        if verdict == CAVEAT else
        f"Training with input noise did not make the code measurably less sensitive to small "
        f"noise than plain training (ratio {ratio:.2f} +- {ratio_se:.2f}).")


@study("ae.rotation", SECTION,
       "To make auto encoders invariant to rotations we give it randomly rotated versions of "
       "the images as input")
def rotation(ctx, max_angle=float(np.pi), robust_ratio=0.7, invariant_shift=0.25):
    """Rotation-augmented against plain training, on randomly rotated test digits."""
    seed, epochs = ctx.seed, _epochs(ctx)
    ds = _digits(seed)
    k_angle, k_pairs = jax.random.split(ctx.key("ae.rotation"))
    x = ds.x_test
    x_rot = models.random_rotation(k_angle, x, float(np.pi))
    plain_model, plain = _dense(seed, epochs)
    model, rotated = (_dense(seed, epochs, max_angle=float(max_angle)) if max_angle
                      else (plain_model, plain))
    numbers = {}
    for label, m, p in (("plain", plain_model, plain), ("rotation", model, rotated)):
        numbers[f"error_rotated_{label}"] = _error(m, p, x_rot)
        numbers[f"error_upright_{label}"] = _error(m, p, x)
        numbers[f"code_shift_{label}"] = _code_shift(m, p, x, x_rot, k_pairs)
    ratio = numbers["error_rotated_rotation"] / numbers["error_rotated_plain"]
    robust = ratio <= robust_ratio
    invariant = numbers["code_shift_rotation"] <= invariant_shift
    verdict = HOLDS if robust and invariant else CAVEAT if robust else FAILS

    figure = _image_rows(ctx, "ae_rotation", {
        "rotated": x_rot[:8], "plain AE": plain_model.apply(plain, x_rot[:8])[0],
        "rotation AE": model.apply(rotated, x_rot[:8])[0]},
        "reconstructions of randomly rotated test digits")
    return Finding(
        verdict=verdict,
        summary=f"error on rotated test digits {numbers['error_rotated_plain']:.2f} (plain) -> "
                f"{numbers['error_rotated_rotation']:.2f} (rotation-trained); code shift under "
                f"rotation {numbers['code_shift_plain']:.2f} -> "
                f"{numbers['code_shift_rotation']:.2f} (1 = as far as another digit)",
        method=f"dense auto-encoders (code {CODE}) trained {epochs} epochs on digits, plainly "
               f"and on images rotated by fresh uniform angles in [-{max_angle:.2f}, "
               f"{max_angle:.2f}] each step (models.rotation_objective); test digits rotated by "
               "uniform angles in [-pi, pi]: reconstruction cost of the rotated digit, and the "
               "code shift ||z(x) - z(rot x)|| relative to the distance between two digits' "
               "codes.",
        numbers={**numbers, "error_ratio": ratio, "max_angle": max_angle},
        threshold=f"robust if the rotated-digit error falls to <= {robust_ratio:g}x the plain "
                  f"one; invariant if the code shift is <= {invariant_shift:g}; holds if both, "
                  "caveat if only robust",
        caveat="" if verdict == HOLDS else
        "Rotated training images make the auto-encoder reconstruct rotated digits well "
        "(robust), but its code is not rotation invariant: to reconstruct the rotated image the "
        "code must keep the angle (the map is equivariant, not invariant). An invariant code "
        "would need a target that does not rotate (reconstruct the upright digit) or an "
        "invariant architecture." if verdict == CAVEAT else
        "Training on rotated images did not lower the error on rotated digits.",
        figures=[figure])


# --- anomaly detection ------------------------------------------------------------------------


@study("ae.anomaly", SECTION,
       "can be used for anomaly detection; anomaly_score = ((reconstruction - x) ** 2)"
       ".sum(axis=-1).sum(axis=-1)")
def anomaly(ctx, normal_classes=(0, 1, 2, 3, 4), anomaly_classes=(5, 6, 7, 8, 9),
            min_auroc=0.8):
    """AUROC of the notes' score for digit classes never seen in training."""
    seed, epochs = ctx.seed, _epochs(ctx, 25, 40, 150)
    ds = _digits(seed)
    model, params = _dense(seed, epochs, classes=normal_classes)
    y = np.asarray(ds.y_test)
    keep = np.isin(y, normal_classes) | np.isin(y, anomaly_classes)
    x, y = ds.x_test[keep], y[keep]
    is_anomaly = np.isin(y, anomaly_classes)
    scores = np.asarray(models.anomaly_score(x, model.apply(params, x)[0]))
    overall = float(models.auroc(scores, is_anomaly))
    per_class = {int(c): float(models.auroc(scores[(y == c) | ~is_anomaly],
                                            (y == c)[(y == c) | ~is_anomaly]))
                 for c in anomaly_classes if (y == c).any()}
    verdict = HOLDS if overall >= min_auroc else FAILS

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    bins = np.linspace(0, np.quantile(scores, 0.99), 30)
    ax.hist(scores[~is_anomaly], bins, alpha=0.6, density=True,
            label=f"normal {tuple(normal_classes)}")
    ax.hist(scores[is_anomaly], bins, alpha=0.6, density=True,
            label=f"anomalies {tuple(anomaly_classes)}")
    ax.set_xlabel("anomaly score sum (x - x_rec)^2")
    ax.set_ylabel("density")
    ax.set_title(f"AUROC {overall:.2f}", fontsize=9)
    ax.legend(fontsize=7)
    figure = ctx.save_figure(fig, "ae_anomaly_scores")
    return Finding(
        verdict=verdict,
        summary=f"AUROC {overall:.2f} for digits of unseen classes against test digits of the "
                "training classes",
        method=f"dense auto-encoder (code {CODE}) trained {epochs} epochs on the digit classes "
               f"{tuple(normal_classes)} only; the notes' anomaly score on the test digits; "
               f"AUROC (models.auroc) with classes {tuple(anomaly_classes)} as anomalies.",
        numbers={"auroc": overall, "auroc_per_class": per_class,
                 "normal_classes": list(normal_classes),
                 "anomaly_classes": list(anomaly_classes), "n_test": int(len(y)),
                 "n_anomalies": int(is_anomaly.sum())},
        threshold=f"holds if the AUROC is at least {min_auroc:g} (0.5 is chance)",
        caveat="" if verdict == HOLDS else
        "The reconstruction error did not separate the anomalies: they are not anomalous for "
        "this auto-encoder (e.g. classes it was trained on), or it generalises to them.",
        figures=[figure])


# --- convolutional codes and U-Net skips ------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _conv(seed: int, epochs: int, filters: int, lam: float):
    """A one-level conv auto-encoder with ``filters`` feature maps in its code."""
    ds = _digits(seed)
    model = models.conv_autoencoder((filters,))
    return model, _fit(model, models.reconstruction_objective(model, lam), ds.x_train, seed,
                       epochs)


def _conv_as_matrix(conv_layer, conv_params, x_one):
    """The encoder convolution as a matrix: its Jacobian ``(outputs, pixels)`` (it is linear)."""
    def pre(v):
        return conv_layer.apply(conv_params, v.reshape(1, *SHAPE))[0].reshape(-1)

    return np.asarray(jax.jacobian(pre)(x_one.reshape(-1)))


@study("ae.conv", SECTION,
       "Convolutional encoding is when W becomes h convolution filters and the source code are "
       "h sparse feature maps")
def conv_encoding(ctx, filters=8, lam=0.05, min_sparse=0.5):
    """Filters, maps and their sparsity in a conv auto-encoder, with and without an L1 term."""
    seed, epochs = ctx.seed, _epochs(ctx, 5, 8, 30)
    ds = _digits(seed)
    model, plain = _conv(seed, epochs, filters, 0.0)
    _, sparse = _conv(seed, epochs, filters, float(lam))  # lam = 0: the plain model again
    conv_layer = model.children[0].children[0]
    kernel = np.asarray(plain["encoder"]["0_conv2d"]["w"], np.float64)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), plain["encoder"]["0_conv2d"])
    matrix = _conv_as_matrix(conv_layer, p64, np.asarray(ds.x_test[0], np.float64))
    weights = np.unique(kernel)
    nonzero = matrix[matrix != 0]
    shared = bool(np.isin(nonzero, weights).all())
    distinct = int(np.unique(nonzero).size)
    per_row = int((matrix != 0).sum(1).max())
    k = kernel.shape[0]
    z_plain = models.encode(model, plain, ds.x_test)
    z_sparse = models.encode(model, sparse, ds.x_test)
    maps = int(z_plain.shape[-1])
    frac_plain, frac_sparse = float(models.sparsity(z_plain)), float(models.sparsity(z_sparse))
    structure = (maps == filters and kernel.shape[-1] == filters and shared
                 and distinct <= filters * k * k and per_row <= k * k)
    verdict = (HOLDS if structure and frac_plain >= min_sparse else
               CAVEAT if structure and frac_sparse >= min_sparse else FAILS)

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, filters, figsize=(0.9 * filters, 2.2), squeeze=False)
    for j in range(filters):
        for r, (z, label) in enumerate(((z_plain, "lam=0"), (z_sparse, f"lam={lam}"))):
            axes[r, j].imshow(np.asarray(z[0, :, :, j]), cmap="viridis")
            axes[r, j].set_xticks([])
            axes[r, j].set_yticks([])
        axes[0, j].set_title(f"map {j}", fontsize=7)
    for r, label in enumerate(("lam=0", f"lam={lam}")):
        axes[r, 0].set_ylabel(label, fontsize=7)
    figure = ctx.save_figure(fig, "ae_conv_feature_maps")
    return Finding(
        verdict=verdict,
        summary=f"{filters} filters give {maps} feature maps of "
                f"{z_plain.shape[1]}x{z_plain.shape[2]}; the conv is a 64 -> "
                f"{matrix.shape[0]} matrix with <= {per_row} nonzeros a row, all among the "
                f"{kernel.size} filter weights; zero code units {frac_plain:.0%} (relu + pool) "
                f"-> {frac_sparse:.0%} with an L1 term",
        method=f"models.conv_autoencoder(({filters},)): conv {k}x{k} with {filters} filters, "
               f"relu, 2x2 max pool; trained {epochs} epochs on digits with the reconstruction "
               f"cost and with + lam sum|z| (lam={lam}). The encoder convolution's Jacobian (the "
               "dense W it replaces) in float64; the fraction of zeros in the test codes.",
        numbers={"filters": filters, "feature_maps": maps, "code_shape": list(z_plain.shape[1:]),
                 "kernel_shape": list(kernel.shape), "matrix_shape": list(matrix.shape),
                 "max_nonzeros_per_row": per_row, "distinct_matrix_values": distinct,
                 "entries_are_filter_weights": shared, "zero_fraction_plain": frac_plain,
                 "zero_fraction_l1": frac_sparse, "lam": lam},
        threshold=f"structure: h filters -> h maps, the matrix built from the filter weights "
                  f"only (<= k^2 per row); sparse: >= {min_sparse:.0%} zero units. Holds if "
                  "the plain code is sparse, caveat if only the L1-trained one is",
        caveat="" if verdict == HOLDS else
        "W does become h shared convolution filters giving h feature maps, but the maps are "
        "sparse only with a sparsity (L1) term in the loss; relu and pooling alone leave most "
        "units active." if verdict == CAVEAT else
        "The conv code was not sparse even with the L1 term (or the structure check failed).",
        figures=[figure])


UNET_CHANNELS = (8, 16)


def _cut_skips(params, channels=UNET_CHANNELS):
    """U-Net params whose skip inputs are zeroed: the same network without skip connections."""
    params = dict(params)
    for i in range(len(channels) - 1):
        w = params[f"up_{i}"]["0_conv2d"]["w"]
        params[f"up_{i}"] = {**params[f"up_{i}"], "0_conv2d": {
            **params[f"up_{i}"]["0_conv2d"], "w": w.at[:, :, channels[i + 1]:, :].set(0.0)}}
    return params


def _no_bottleneck(params, channels=UNET_CHANNELS):
    """U-Net params whose coarsest level outputs zeros: only the skips carry the image."""
    last = f"down_{len(channels) - 1}"
    return {**params, last: jax.tree.map(jnp.zeros_like, params[last])}


@functools.lru_cache(maxsize=None)
def _unet(seed: int, epochs: int, skips: bool):
    ds = _digits(seed)
    model = models.unet(UNET_CHANNELS)
    objective = models.reconstruction_objective(model)
    if not skips:
        def objective(params, x, _inner=objective):
            return _inner(_cut_skips(params), x)
    params = _fit(model, objective, ds.x_train, seed, epochs)
    return model, params if skips else _cut_skips(params)


def _detail(x) -> np.ndarray:
    """High-frequency part of images ``(n, 8, 8, 1)``: the image minus its 3x3 local mean."""
    from scipy.ndimage import uniform_filter

    x = np.asarray(x, np.float64)
    return x - uniform_filter(x, size=(1, 3, 3, 1), mode="nearest")


@study("ae.unet-skip", SECTION,
       "U-nets skip connections allow low level data like spatial information to flow properly "
       "for really good reconstruction")
def unet_skips(ctx, skips=True, max_ratio=0.7):
    """The same U-Net with and without its skip connections, equal budget."""
    seed, epochs = ctx.seed, _epochs(ctx, 5, 8, 30)
    ds = _digits(seed)
    x = ds.x_test
    model, with_skips = _unet(seed, epochs, skips)
    _, without = _unet(seed, epochs, False)
    rec_skip, rec_cut = model.apply(with_skips, x)[0], model.apply(without, x)[0]
    rec_bypass = model.apply(_no_bottleneck(with_skips), x)[0]
    err = {name: float(losses.reconstruction(x, r))
           for name, r in (("skips", rec_skip), ("no_skips", rec_cut), ("bypass", rec_bypass))}
    hf = _detail(x)
    detail = {name: float(((_detail(r) - hf) ** 2).sum() / (hf ** 2).sum())
              for name, r in (("skips", rec_skip), ("no_skips", rec_cut), ("bypass", rec_bypass))}
    error_ratio, detail_ratio = err["skips"] / err["no_skips"], detail["skips"] / detail[
        "no_skips"]
    better = error_ratio <= max_ratio and detail_ratio <= max_ratio
    bypass = err["bypass"] < err["no_skips"]
    verdict = CAVEAT if better and bypass else HOLDS if better else FAILS
    figure = _image_rows(ctx, "ae_unet_skips", {
        "test digit": x[:8], "U-Net": rec_skip[:8], "no skips": rec_cut[:8],
        "skips only": rec_bypass[:8]}, "U-Net reconstructions with and without skips")
    return Finding(
        verdict=verdict,
        summary=f"test reconstruction cost {err['no_skips']:.2f} without skips -> "
                f"{err['skips']:.2f} with; relative high-frequency error {detail['no_skips']:.2f}"
                f" -> {detail['skips']:.2f}; bottleneck zeroed: {err['bypass']:.2f}",
        method=f"models.unet({UNET_CHANNELS}) (8x8 and 4x4 levels) trained {epochs} epochs on "
               "digits, and the same network with its skip inputs held at zero (same weights "
               "otherwise, same initialisation and minibatches). Test reconstruction cost, the "
               "relative error of the high-frequency part (image minus its 3x3 mean), and the "
               "U-Net's error with its bottleneck level zeroed (only the skips carry the image).",
        numbers={"reconstruction": err, "relative_detail_error": detail,
                 "error_ratio": error_ratio, "detail_ratio": detail_ratio, "epochs": epochs},
        threshold=f"holds if the skips cut both the error and the detail error to <= "
                  f"{max_ratio:g}x; caveat if besides the skips alone (bottleneck zeroed) beat "
                  "the network without skips",
        caveat="" if verdict == HOLDS else
        "The skips do give a much better, sharper reconstruction, but they bypass the code: "
        "with the bottleneck zeroed the U-Net still reconstructs better than without skips. A "
        "U-Net is an image-to-image network (segmentation, denoising), not a compressing "
        "auto-encoder; its reconstruction error says nothing about its code."
        if verdict == CAVEAT else
        "The skip connections did not improve the reconstruction at equal budget.",
        figures=[figure])
