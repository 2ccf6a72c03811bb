"""--mode=similarity: layer-by-layer transferability from trained networks, no retraining.

    python -m kt_transfer.main --mode=similarity      # after baseA and baseB (and a grid)

Reads the experiment's existing networks and computes, with forward passes only:
  - linear CKA between baseA and baseB at each of conv1..fc7, and the full layer x layer
    matrix, on the validation images of each half (`similarity.halves`);
  - CKA between every trained transfer network and its base, layer by layer (how far
    fine-tuning moved the copied layers, what fresh layers learned);
  - a linear probe per layer of baseA: a softmax classifier on the layer's frozen,
    spatially averaged features, trained (Keras, Adam) on half B's training images and
    scored on its validation images, next to the AnB curve of the grid;
  - LogME per layer of baseA on the same features.
Features are extracted once per network and half. Writes <experiment>/similarity/:
similarity.csv / .md, similarity.png, TensorBoard logs (scalars per layer, the CKA
matrix as an image), and a rank correlation with the grid's AnB curve where it exists.
"""

import os
import re
import time

import keras
import numpy as np

from kt_transfer import atomic
from kt_transfer.analysis import findings, results, similarity
from kt_transfer.data import pipeline
from kt_transfer.networks import families, transfer
from kt_transfer.runs import experiment
from kt_transfer.training import keras_compat

# The layers measured: every cut point but the classifier (CaffeNet's; another network
# family's come from families.block_names, passed as `layers`).
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
# Probes and LogME are also computed on this many principal components of every layer
# (conv1's 12 channels at width 0.125), so layers compare at one feature dimension.
EQUAL_DIMENSION = 12


def _load(exp_dir, run):
    return experiment.load_network(os.path.join(exp_dir, run))


def _activations(model, layers=LAYERS):
    return keras.Model(model.input, keras_compat.block_outputs(model, layers))


def _pooled(activation):
    """Spatially averaged features (conv maps; a ViT's tokens: averaged over tokens) or
    the vector itself (fc), float64."""
    a = keras.ops.convert_to_numpy(activation).astype(np.float64)
    return a.mean(axis=tuple(range(1, a.ndim - 1))) if a.ndim > 2 else a


def _images(config, dataset, half, subset, limit, batch_size=100, seed=0):
    """Up to `limit` (uint8 images, labels) of a half, drawn across every class (an equal
    share each, as far as a class has images) and shuffled with a fixed seed into
    batches of `batch_size`.

    A class-sorted prefix of the half would show the measures the first few classes
    only, and its minibatches would hold one or two classes each, where the minibatch
    CKA estimator assumes randomly drawn batches. Only the shares are kept in memory
    while the half is read.
    """
    classes = dataset.split.half(half)
    quota = -(-limit // len(classes))
    by_class = {}
    ds = pipeline.make_dataset(
        dataset.source,
        subset,
        classes,
        resize_size=config.dataset.resize_size,
        crop_size=config.model.input_size,
        batch_size=100,
        training=False,
    )
    for images, labels in ds:
        for image, label in zip(images.numpy(), labels.numpy()):
            share = by_class.setdefault(int(label), [])
            if len(share) < quota:
                share.append(image)
        if len(by_class) == len(classes) and all(len(v) >= quota for v in by_class.values()):
            break
    return mixed_batches(by_class, limit, batch_size, seed)


def mixed_batches(by_class, limit, batch_size, seed=0):
    """[(images, labels)] batches of up to `limit` examples of {label: [image, ...]}:
    the classes taken in turn (so each gets an equal share of `limit`), then shuffled
    with `seed`, so every batch mixes the classes."""
    ranked = [
        (label, images[rank])
        for rank in range(max((len(v) for v in by_class.values()), default=0))
        for label, images in sorted(by_class.items())
        if rank < len(images)
    ][:limit]
    order = np.random.default_rng(seed).permutation(len(ranked))
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = [ranked[i] for i in order[start : start + batch_size]]
        batches.append(
            (np.stack([image for _, image in chosen]), np.array([lab for lab, _ in chosen]))
        )
    return batches


def layer_grams(model, batches, layers=LAYERS):
    """Per minibatch, the Gram matrix of each measured layer's features: what CKA needs
    of a network, computed once per network and image set."""
    activations = _activations(model, layers)
    return [
        [
            similarity.gram(keras.ops.convert_to_numpy(a))
            for a in activations(images, training=False)
        ]
        for images, _ in batches
    ]


def cka_between(first, second, batches, diagonal=False, layers=LAYERS):
    """[layers, layers] minibatch CKA matrix between the layers of two networks (or its
    diagonal). Either network may be given as its layer_grams of these batches."""
    acc = similarity.MinibatchCKA(diagonal=diagonal)
    grams = [m if isinstance(m, list) else layer_grams(m, batches, layers) for m in (first, second)]
    for grams_x, grams_y in zip(*grams):
        acc.update_grams(grams_x, grams_y)
    return acc.value()


def pooled_features(model, batches, layers=LAYERS):
    """({layer: [n, channels]}, labels) of spatially averaged features."""
    activations = _activations(model, layers)
    feats, labels = {name: [] for name in layers}, []
    for images, y in batches:
        for name, a in zip(layers, activations(images, training=False)):
            feats[name].append(_pooled(a))
        labels.append(y)
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels)


def linear_probe(train_x, train_y, val_x, val_y, num_classes, epochs=30, seed=0):
    """Top-1 of a softmax classifier on frozen features (standardized on the training
    features), trained with Keras' Adam."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    keras.utils.set_random_seed(seed)
    probe = keras.Sequential([keras.Input((train_x.shape[1],)), keras.layers.Dense(num_classes)])
    probe.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    probe.fit(
        ((train_x - mean) / std).astype("float32"),
        train_y,
        batch_size=128,
        epochs=epochs,
        verbose=0,
    )
    return float(probe.evaluate(((val_x - mean) / std).astype("float32"), val_y, verbose=0)[1])


def run_similarity(config, dataset, log=print):
    """Computes and writes everything above; returns the table rows."""
    started = time.monotonic()
    exp_dir = experiment.experiment_dir(config, dataset)
    base_a, base_b = _load(exp_dir, "baseA"), _load(exp_dir, "baseB")
    if base_a is None or base_b is None:
        raise FileNotFoundError(
            f"--mode=similarity reads trained networks; {exp_dir} has no baseA and baseB "
            "yet: python -m kt_transfer.main --mode=baseA (and --mode=baseB), or --mode=grid"
        )
    sc = config.similarity
    layers = families.block_names(config.model)[:-1]
    rows, matrices = [], {}
    seeded = _seed_control_bases(config, dataset, exp_dir)
    for half in sc.halves:
        batches = list(_images(config, dataset, half, "val", sc.max_images))
        grams_a = layer_grams(base_a, batches, layers)
        grams_b = layer_grams(base_b, batches, layers)
        matrices[half] = cka_between(grams_a, grams_b, batches)
        rows += _layer_rows(f"CKA(baseA, baseB) on {half}", np.diag(matrices[half]), layers)
        null = similarity.cka_null(grams_a, grams_b, sc.get("null_permutations", 20))
        rows += _layer_rows(
            f"CKA null 95th percentile on {half}", np.quantile(null, 0.95, 0), layers
        )
        log(
            f"similarity: CKA(baseA, baseB) on half {half}: "
            + " ".join(f"{v:.3f}" for v in np.diag(matrices[half]))
            + f" (mismatched images: at most {np.quantile(null, 0.95, 0).max():.3f})"
        )
        # The seed control: the same half's base trained again from another seed (the
        # split's seeded replicate). CKA(baseA, baseB) means little without it.
        own = f"base{half}"
        if seeded.get(own) is not None:
            grams_own = grams_a if half == "A" else grams_b
            same = cka_between(grams_own, seeded[own], batches, diagonal=True, layers=layers)
            rows += _layer_rows(f"CKA({own}, {own} other seed) on {half}", same, layers)
            log(f"similarity: seed control {own} on {half}: " + " ".join(f"{v:.3f}" for v in same))
    rows += _transfer_cka(config, dataset, exp_dir, sc, log, layers)
    rows += _probes(config, dataset, base_a, sc, log, layers)
    seconds = time.monotonic() - started
    out = os.path.join(exp_dir, "similarity")
    os.makedirs(out, exist_ok=True)
    grid_curve = _grid_curve(config, dataset)
    notes = _rank_notes(rows, grid_curve)
    for note in notes:
        log(f"similarity: {note}")
    _write(
        out, rows, matrices, (grid_curve, _grid_curve(config, dataset, "B")), notes, seconds, log
    )
    return rows


def _layer_rows(measure, values, layers):
    return [
        {"measure": measure, "layer": name, "n": i + 1, "value": float(values[i])}
        for i, name in enumerate(layers)
    ]


def _seed_control_bases(config, dataset, exp_dir):
    """{"baseA": network, "baseB": network} of the split's first seeded replicate
    (<split>.s1: the same halves, train.seed + 1), where it was trained: the grid's
    `--config.grid.splits='("random0", "random0.s1")'`, or --mode=baseA on the split."""
    if dataset.split.seed_offset:
        return {}
    seeded_dir = os.path.join(
        os.path.dirname(os.path.dirname(exp_dir)),
        f"{dataset.split.name}.s1",
        os.path.basename(exp_dir),
    )
    return {base: _load(seeded_dir, base) for base in ("baseA", "baseB")}


def _probes(config, dataset, base_a, sc, log, layers):
    """Linear probes and LogME per layer of baseA on half B (the AnB question), on the
    pooled features and on their EQUAL_DIMENSION leading principal components: both
    measures grow with feature dimension (12-48 for pooled conv maps at width 0.125,
    512 for fc6/fc7), which the equal-dimension version takes out."""
    train = list(_images(config, dataset, "B", "train", sc.probe_train_images))
    val = list(_images(config, dataset, "B", "val", sc.max_images))
    train_x, train_y = pooled_features(base_a, train, layers)
    val_x, val_y = pooled_features(base_a, val, layers)
    classes = len(dataset.split.half("B"))
    dim = min(EQUAL_DIMENSION, *(x.shape[1] for x in train_x.values()))
    rows = []
    for i, name in enumerate(layers):
        reduced_train, reduced_val = similarity.principal_components(
            train_x[name], [val_x[name]], dim
        )
        values = {
            "probe top-1 (baseA features, half B)": linear_probe(
                train_x[name], train_y, val_x[name], val_y, classes, epochs=sc.probe_epochs
            ),
            "LogME (baseA features, half B)": similarity.logme(train_x[name], train_y)[0],
            f"probe top-1 ({dim} PCs of baseA features, half B)": linear_probe(
                reduced_train, train_y, reduced_val, val_y, classes, epochs=sc.probe_epochs
            ),
            f"LogME ({dim} PCs of baseA features, half B)": similarity.logme(
                reduced_train, train_y
            )[0],
        }
        rows += [
            {"measure": measure, "layer": name, "n": i + 1, "value": float(value)}
            for measure, value in values.items()
        ]
        log(f"similarity: {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return rows


def _transfer_cka(config, dataset, exp_dir, sc, log, layers):
    """CKA, layer by layer, between each finished transfer network and its base (each
    base's Grams computed once per half)."""
    rows, base_grams, batches = [], {}, {}
    names = sorted(
        n
        for n in os.listdir(exp_dir)
        if "_" not in n and os.path.exists(os.path.join(exp_dir, n, experiment.MODEL_FILE))
    )
    for run in names[: sc.max_transfer_runs]:
        if run.startswith("base"):
            continue
        try:  # A4B+ -> AnB+ with n = 4
            match = re.fullmatch(r"([ABR])(\d+)([AB]\+?)", run)
            treatment = transfer.parse_treatment(
                f"{match[1]}n{match[3]}", int(match[2]), families.block_names(config.model)
            )
        except (ValueError, TypeError):  # TypeError: not a transfer run's name
            continue
        if not treatment.base_mode:  # RnB: no base to compare with
            continue
        half = treatment.target
        if half not in batches:
            batches[half] = list(_images(config, dataset, half, "val", sc.transfer_images))
        key = (treatment.base_mode, half)
        if key not in base_grams:
            base = _load(exp_dir, treatment.base_mode)
            base_grams[key] = layer_grams(base, batches[half], layers)
        per_layer = cka_between(
            _load(exp_dir, run), base_grams[key], batches[half], diagonal=True, layers=layers
        )
        for i, name in enumerate(layers):
            rows.append(
                {
                    "measure": f"CKA({run}, {treatment.base_mode})",
                    "layer": name,
                    "n": i + 1,
                    "value": float(per_layer[i]),
                }
            )
    if rows:
        log(f"similarity: CKA of {len(rows) // len(layers)} transfer networks with their bases")
    return rows


def _grid_curve(config, dataset, source="A"):
    """{n: top-1} of AnB (source "A"; BnB: "B") of the experiment's own split, where the
    grid ran."""
    exp_dir = experiment.experiment_dir(config, dataset)
    curve = {}
    for n in range(1, len(families.block_names(config.model))):
        metrics = experiment.read_metrics(os.path.join(exp_dir, f"{source}{n}B"))
        if metrics and metrics.get("status") == "finished":
            curve[n] = metrics["top1"]
    return curve


def _rank_notes(rows, grid_curve):
    """Does each training-free curve rank the layers as this split's AnB networks do?
    (findings.md asks the same of the grid's pooled AnB curve.)"""
    if len(grid_curve) < 3:
        return ["no AnB curve from the grid yet (fewer than 3 of A1B..A7B): no rank correlation"]
    measures = {}
    for r in rows:
        if results.is_layer_curve(r["measure"]):
            measures.setdefault(r["measure"], {})[r["n"]] = r["value"]
    return [
        f"Spearman rank correlation of {r['measure']} with this split's AnB top-1 over "
        f"n = {', '.join(map(str, r['ns']))}: {r['rho']:+.2f}, exact p = {r['p']:.3f}: "
        f"{r['verdict']}"
        for r in findings.rank_agreement(measures, grid_curve)
    ]


def _write(out, rows, matrices, grid_curves, notes, seconds, log):
    columns = ("measure", "layer", "n", "value")
    atomic.write_text(os.path.join(out, "similarity.csv"), results.to_csv(rows, columns))
    atomic.write_text(
        os.path.join(out, "similarity.md"),
        results.to_markdown(rows, columns)
        + "\n"
        + "\n".join(f"- {n}" for n in notes)
        + f"\n- computed in {seconds:.0f} s\n",
    )
    _plot(os.path.join(out, "similarity.png"), rows, matrices, grid_curves)
    _tensorboard(os.path.join(out, "logs"), rows, matrices)
    log(
        f"similarity: wrote {out}/similarity.csv, similarity.md, similarity.png, logs/ "
        f"({seconds:.0f} s)"
    )


def _plot(path, rows, matrices, grid_curves):
    """similarity.png: one axis per quantity (CKA; top-1 of probes and of the grid; LogME)
    and the layer x layer CKA matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(measure):
        return sorted((r["n"], r["value"]) for r in rows if r["measure"] == measure)

    layers = [name for _, name in sorted({(r["n"], r["layer"]) for r in rows})]

    def draw(ax, measures, title, ylabel):
        for measure, style in measures:
            points = curve(measure)
            if points:
                ax.plot(*zip(*points), style, label=measure)
        ax.set_xticks(range(1, len(layers) + 1), layers, rotation=45)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)

    measures = sorted({r["measure"] for r in rows})
    fig, axes = plt.subplots(1, 4, figsize=(21, 5))
    draw(
        axes[0],
        [(m, "o-") for m in measures if m.startswith("CKA(baseA, baseB)")]
        + [(m, "s--") for m in measures if "other seed" in m]
        + [(m, ":") for m in measures if m.startswith("CKA null")],
        "CKA between the bases, the seed control, the null",
        "linear CKA",
    )
    draw(
        axes[1],
        [(m, "^-") for m in measures if m.startswith("probe")],
        "top-1: probes on baseA's layers, the grid",
        "validation top-1 on half B",
    )
    for points, label, colour in zip(grid_curves, ("AnB", "BnB"), ("tab:red", "tab:blue")):
        if points:
            axes[1].plot(
                *zip(*sorted(points.items())), "x--", color=colour, label=f"{label} (grid, trained)"
            )
    draw(
        axes[2],
        [(m, "d-") for m in measures if m.startswith("LogME")],
        "LogME per layer",
        "LogME (log evidence per example)",
    )
    for ax in axes[:3]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax = axes[3]
    half = sorted(matrices)[-1]
    image = ax.imshow(matrices[half], vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(layers)), layers, rotation=45)
    ax.set_yticks(range(len(layers)), layers)
    ax.set_xlabel("baseB layer")
    ax.set_ylabel("baseA layer")
    ax.set_title(f"CKA(baseA, baseB), layer x layer, half {half}", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=110, bbox_inches="tight")


def _tensorboard(log_dir, rows, matrices):
    import tensorflow as tf

    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for r in rows:
            tag = r["measure"].replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            tf.summary.scalar(f"{tag}/by_layer", r["value"], step=r["n"])
        for half, matrix in matrices.items():
            image = np.repeat(np.kron(matrix, np.ones((16, 16)))[None, :, :, None], 3, -1)
            tf.summary.image(f"cka_matrix_half_{half}", image.astype("float32"), step=0)
    writer.flush()
