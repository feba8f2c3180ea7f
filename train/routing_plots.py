"""Pictures of what routers do, in the manner of the routing analyses of the V-MoE paper (Riquelme et al. 2021).

    expert_usage.png  per MoE layer, a classes x experts heatmap: how much of each class goes to each expert
    routing_maps.png  a few test images; per MoE layer, each patch in the colour of its main expert

The expert weights come from ``ViTMoE.expert_weights`` computed in evaluation order (``train.evaluators``):
sparse routers route several images together, so a patch's experts depend on the other images of its group,
and the pictures show the routing that the run's test accuracy was measured with. ``draw_routing`` draws both
for a model in memory: the trainer calls it at the end of a run, ``python -m train.visualize`` on a trained
workdir. Imports ``optimized``, ``train.data``, ``train.config`` and ``train.evaluators``; never the trainer.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

from optimized import ViTMoE

from .config import Config
from .data import Splits, test_arrays
from .evaluators import in_batches

USAGE_LABELS = {False: "fraction of the class's patches processed", True: "mean weight over the class's patches"}


# ------------------------------------------------------------------------------------------------- numbers


@eqx.filter_jit
def _batch_expert_weights(model, images):
    return jnp.moveaxis(model.expert_weights(images, inference=True), 0, 1)  # (L, B, N, E) -> (B, L, N, E)


def expert_weights(model: ViTMoE, images: np.ndarray, batch_size: int, sharding) -> np.ndarray:
    """``model.expert_weights`` of every image, (B, L, N, E) in stored order, routed in evaluation order.

    The images are grouped exactly as the evaluation groups them (``train.evaluators.in_batches``: batches of
    ``batch_size`` in a content-hash order), so the routing shown is the routing the test accuracy saw.
    Call it under ``jax.set_mesh(mesh)`` with ``sharding = train.sharding.batch_sharding(mesh)``.
    """
    return in_batches(_batch_expert_weights, model, images, batch_size, sharding)


def expert_usage(weights, labels, num_classes: int, *, soft: bool = False) -> np.ndarray:
    """Per MoE layer, class and expert: how much of the class's patches the expert handles, (L, classes, E).

    ``weights`` is (B, L, N, E) (``expert_weights``), ``labels`` (B,) in ``[0, num_classes)``. Sparse routers
    (``soft=False``): ``usage[l, c, e]`` = the fraction of class c's patches (all N patches of all its images)
    that expert e processed (weight > 0) in layer l. Soft MoE (``soft=True``): the mean of the weights
    themselves (each patch's row sums to 1, so a class's row does too).

    Choice: for Soft MoE the weight, not ``weight > 0``: every expert takes part in every patch, so the
    fraction would be 1 everywhere and show nothing. Choice: a class with no image in ``labels`` gets a row of
    NaN (undefined, drawn blank), not of zeros, which would read as "no expert takes it".

    >>> w = np.zeros((2, 1, 1, 2)); w[0, 0, 0] = [0.5, 0.0]; w[1, 0, 0] = [0.25, 0.75]
    >>> expert_usage(w, np.array([0, 0]), 2)[0].tolist()
    [[1.0, 0.5], [nan, nan]]
    """
    weights = np.asarray(weights)
    labels = np.asarray(labels)
    if weights.ndim != 4:
        raise ValueError(f"weights must have shape (B, L, N, E), got shape {weights.shape}")
    if labels.shape != weights.shape[:1]:
        raise ValueError(f"labels must have shape (B,) = ({weights.shape[0]},) like weights, got {labels.shape}")
    if not isinstance(num_classes, int | np.integer) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {labels.min()} to {labels.max()}")
    per_image = (weights if soft else weights > 0).astype(np.float64).mean(axis=2)  # (B, L, E) over the N patches
    one_hot = np.eye(num_classes)[labels]  # (B, classes)
    counts = one_hot.sum(axis=0)
    sums = np.einsum("bc,ble->lce", one_hot, per_image)
    with np.errstate(invalid="ignore", divide="ignore"):  # every image has N patches: mean of the image means
        return np.where(counts[None, :, None] > 0, sums / counts[None, :, None], np.nan)


def pick_images(labels, num_images: int) -> np.ndarray:
    """Indices of ``num_images`` images to draw, deterministic: the first image of each class in class order,
    then the second image of each class, and so on (classes without an image are skipped).

    >>> pick_images(np.array([1, 1, 0, 2, 0]), 4).tolist()
    [2, 0, 3, 4]
    """
    labels = np.asarray(labels)
    if not isinstance(num_images, int | np.integer) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
    if num_images > len(labels):
        raise ValueError(f"num_images = {num_images} is more than the {len(labels)} images available")
    rank = np.zeros(len(labels), np.int64)  # how many earlier images share the image's class
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))[:num_images]  # by rank, then by class


# ---------------------------------------------------------------------------------------------------- plots


def expert_colors(num_experts: int) -> np.ndarray:
    """A fixed qualitative colour per expert, (E, 4) RGBA: tab10 up to 10 experts, tab20 up to 20, then
    tab20 + tab20b + tab20c up to 60, then evenly spaced hues."""
    if num_experts <= 10:
        return plt.get_cmap("tab10")(np.arange(num_experts))
    if num_experts <= 20:
        return plt.get_cmap("tab20")(np.arange(num_experts))
    if num_experts <= 60:
        palette = np.concatenate([plt.get_cmap(name)(np.arange(20)) for name in ("tab20", "tab20b", "tab20c")])
        return palette[:num_experts]
    return plt.get_cmap("hsv")(np.arange(num_experts) / num_experts)


def _tick_step(count: int, most: int = 30) -> int:
    return max(1, math.ceil(count / most))


def plot_expert_usage(
    usage,
    path,
    *,
    title: str,
    class_names,
    value_label: str = USAGE_LABELS[False],
    blocks: tuple[int, ...] | None = None,
) -> Path:
    """One heatmap per MoE layer (block 1, 3, 5, ..., or ``blocks``): classes (rows) x experts (columns), one colour
    scale.

    ``usage`` is (L, classes, E) from ``expert_usage``; with many classes or experts every k-th tick is labelled.
    """
    usage = np.asarray(usage, dtype=np.float64)
    if usage.ndim != 3:
        raise ValueError(f"usage must have shape (L, classes, E), got shape {usage.shape}")
    layers, num_classes, num_experts = usage.shape
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for the {num_classes} classes of usage")
    finite = usage[np.isfinite(usage)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    panel_w = min(max(2.5, 0.15 * num_experts + 1.0), 5.0)  # inches; many classes or experts: thinner cells
    panel_h = min(max(2.5, 0.15 * num_classes + 1.0), 8.0)
    fig, axes = plt.subplots(1, layers, figsize=(max(panel_w * layers + 1.2, 6.0), panel_h + 0.9), squeeze=False,
                             layout="constrained")  # fmt: skip
    image = None
    for i, ax in enumerate(axes[0]):
        image = ax.imshow(usage[i], aspect="auto", vmin=0, vmax=vmax, cmap="viridis", interpolation="nearest")
        ax.set_title(f"MoE layer {i + 1} (block {2 * i + 1 if blocks is None else blocks[i]})", fontsize=9)
        ax.set_xlabel("expert")
        step = _tick_step(num_experts, 16)
        ax.set_xticks(range(0, num_experts, step), [str(e) for e in range(0, num_experts, step)], fontsize=7)
        step = _tick_step(num_classes)
        ax.set_yticks(range(0, num_classes, step), [str(class_names[c]) for c in range(0, num_classes, step)],
                      fontsize=7)  # fmt: skip
        if i == 0:
            ax.set_ylabel("class")
    fig.colorbar(image, ax=axes[0].tolist(), label=value_label, shrink=0.9)
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _display(image: np.ndarray) -> np.ndarray:
    """An image rescaled to [0, 1] for display (a constant image becomes mid-grey); RGB stays RGB, any other
    channel count becomes the grey mean of its channels."""
    image = np.asarray(image, dtype=np.float64)
    image = image if image.shape[-1] == 3 else image.mean(axis=-1)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.full_like(image, 0.5)


def plot_routing_maps(
    images,
    weights,
    path,
    *,
    title: str,
    patch_size: int,
    mark_counts: bool = True,
    labels: list[str] | None = None,
    blocks: tuple[int, ...] | None = None,
) -> Path:
    """A grid: one row per image; the image, then per MoE layer the image with each patch in its main expert's colour.

    ``images`` (n, H, W, ch), ``weights`` (n, L, N, E) with N = (H / patch_size) * (W / patch_size) in row-major
    patch order (as ``ViTMoE`` cuts them). A patch takes the colour of its expert of largest weight; with
    ``mark_counts`` a patch processed by 2 or more experts (weight > 0) carries their number; a patch no expert
    processed (all-zero row: dropped) is crossed out in black. ``labels`` names the rows (e.g. the class).

    Choice: Soft MoE gives every patch to every expert (all weights > 0), so for it the caller passes
    ``mark_counts=False``: every patch would carry the same number E.
    """
    images = np.asarray(images)
    weights = np.asarray(weights)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, H, W, ch), got shape {images.shape}")
    if weights.ndim != 4 or weights.shape[0] != images.shape[0]:
        raise ValueError(f"weights must have shape (n, L, N, E) with n = {images.shape[0]}, got {weights.shape}")
    n, height, width, _ = images.shape
    if not isinstance(patch_size, int) or patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(f"patch_size must be a positive integer dividing the image size {height}x{width}, got "
                         f"{patch_size!r}")  # fmt: skip
    rows, cols = height // patch_size, width // patch_size
    _, layers, num_patches, num_experts = weights.shape
    if num_patches != rows * cols:
        raise ValueError(f"weights has N = {num_patches} patches per image; images of {height}x{width} in patches of "
                         f"{patch_size} have {rows * cols}")  # fmt: skip
    colors = expert_colors(num_experts)
    cell = 1.6
    fig_width = max(cell * (layers + 1), 5.0)  # room for the title and the legend
    ncol = max(1, min(num_experts + 1, int(fig_width / 1.1)))
    legend_rows = math.ceil((num_experts + 1) / ncol)
    fig, axes = plt.subplots(n, layers + 1, figsize=(fig_width, cell * n + 0.8 + 0.22 * legend_rows),
                             squeeze=False, layout="constrained")  # fmt: skip
    count_size = max(4.0, min(9.0, 60 / max(rows, cols)))
    for i in range(n):
        shown = _display(images[i])
        grey = shown if shown.ndim == 2 else shown @ np.array([0.299, 0.587, 0.114])
        ax = axes[i, 0]
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_ylabel(labels[i] if labels is not None else f"image {i}", fontsize=8)
        for layer in range(layers):
            w = weights[i, layer]  # (N, E)
            main = w.argmax(axis=-1).reshape(rows, cols)
            used = (w > 0).sum(axis=-1).reshape(rows, cols)
            overlay = colors[main]  # (rows, cols, 4)
            overlay[..., 3] = np.where(used > 0, 0.6, 0.0)
            overlay = overlay.repeat(patch_size, axis=0).repeat(patch_size, axis=1)
            ax = axes[i, layer + 1]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.imshow(overlay, interpolation="nearest")
            for r, c in zip(*np.nonzero(used == 0), strict=True):  # dropped: crossed out
                x0, y0 = c * patch_size - 0.5, r * patch_size - 0.5
                ax.add_patch(Rectangle((x0, y0), patch_size, patch_size, facecolor=(1, 1, 1, 0.6), hatch="xx",
                                       edgecolor="black", linewidth=0.8))  # fmt: skip
            if mark_counts:
                for r, c in zip(*np.nonzero(used >= 2), strict=True):
                    ax.text(c * patch_size + (patch_size - 1) / 2, r * patch_size + (patch_size - 1) / 2,
                            str(used[r, c]), ha="center", va="center", fontsize=count_size, color="black",
                            bbox=dict(boxstyle="round,pad=0.1", facecolor="white", alpha=0.7, linewidth=0))  # fmt: skip
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    for layer in range(layers):
        block = 2 * layer + 1 if blocks is None else blocks[layer]
        axes[0, layer + 1].set_title(f"MoE layer {layer + 1}\n(block {block})", fontsize=9)
    handles = [Patch(facecolor=colors[e], label=f"expert {e}") for e in range(num_experts)]
    if np.any(np.all(weights <= 0, axis=-1)):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="xx", label="dropped (no expert)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- both


def draw_routing(model: ViTMoE, config: Config, dataset, out, *, step: int, sharding, num_images: int = 6,
                 max_streamed: int = 1024, progress: bool = False) -> list[Path]:  # fmt: skip
    """Write ``expert_usage.png`` and ``routing_maps.png`` of ``model`` (trained to ``step``) on the test split of
    ``dataset`` into ``out``; returns their paths. Call it under ``jax.set_mesh(mesh)`` with ``sharding =
    train.sharding.batch_sharding(mesh)`` on every process: every process routes its share, process 0 draws.

    Choice: a streamed test split (an image folder or shards) is decoded into memory only in part, its first
    ``max_streamed`` images in evaluation order (``train.data.test_arrays``; 1024 images of 224 px are 600 MB),
    routed in groups of that subset; the usage plot says how many images it counts.
    """
    for name, value in (("num_images", num_images), ("max_streamed", max_streamed)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(dataset, Splits):
        test_images, test_labels = test_arrays(dataset, max_streamed)
    else:
        test_images, test_labels = dataset.test_images, dataset.test_labels
    picked = pick_images(test_labels, num_images)  # checks num_images against the test split first
    weights = expert_weights(model, test_images, config.batch_size, sharding)
    if jax.process_index() != 0:
        return []
    soft = config.model.router == "soft_moe"
    usage = expert_usage(weights, test_labels, dataset.num_classes, soft=soft)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = config.model
    factor = f"{'k' if m.router in ('softmax_token_choice', 'sinkhorn_token_choice') else 'c'} = {m.factor}"
    name = f"{m.router} ({factor}, E = {m.num_experts}), step {step}"
    written = [
        plot_expert_usage(
            usage, out / "expert_usage.png", class_names=dataset.class_names, value_label=USAGE_LABELS[soft],
            blocks=m.moe_block_indices,
            title=f"{name}\nexpert usage per class on the {len(test_labels)} test images",
        ),
        plot_routing_maps(
            test_images[picked], weights[picked], out / "routing_maps.png", patch_size=m.patch_size,
            mark_counts=not soft, labels=[f"class {dataset.class_names[c]}" for c in test_labels[picked]],
            blocks=m.moe_block_indices,
            title=f"{name}\ncolour: the patch's expert of largest weight"
            + ("" if soft else "\nnumber: how many experts process the patch"),
        ),
    ]  # fmt: skip
    if progress:
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
    return written
