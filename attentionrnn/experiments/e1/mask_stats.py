"""What an attention mask covers and how *consistent* it is (E1; definitions in docs/e1.md).

Per sample and attention layer, from the mask on its own grid and its projection onto the image
(:func:`~attentionrnn.data.regions.mask_to_image`, the network's geometry):

- **region shares**: the mask's mass on the queried digit's strokes, on the other digits' strokes
  and on the background (pixels of no digit); the three sum to 1. A uniform mask scores each
  region's share of the image area, returned beside them as ``area_*``.
- **relative entropy**: ``H(p) / log(n)`` of the mask normalised over its ``n`` cells; 1 for a
  uniform mask, 0 for all mass in one cell.
- **total variation per unit mass**: ``sum |m(i+1, j) - m(i, j)| + |m(i, j+1) - m(i, j)|`` over
  the grid, divided by ``sum m``; 0 for a uniform mask, larger for a ragged one (scale-free).
- **peak-region share**: the share of the mass in the 4-connected region of above-mean cells that
  holds the peak; 1 for one compact blob, small for mass scattered over many islands. A mask with
  no cell above its mean (uniform) scores 1.
- **border share**: the share of the mass on the grid's outermost ring of cells (a uniform mask:
  the ring's share of the cells, ``area_border``): a spatial bias that ignores image and query.
- **layer agreement**: Pearson correlation of two consecutive layers' masks projected onto the
  image (``nan`` where either is constant).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from attentionrnn.data.regions import mask_to_image

__all__ = [
    "REGIONS",
    "area_shares",
    "border_share",
    "layer_agreement",
    "mask_statistic_names",
    "mask_statistics",
    "peak_region_share",
    "region_shares",
    "relative_entropy",
    "summarize_statistics",
    "tv_per_mass",
]

#: The regions an image is split into, in the order of :func:`region_shares`.
REGIONS = ("queried", "others", "background")


def _grid(mask: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` float64 of masks ``(B, 1, h, w)`` or ``(B, h, w)``."""
    if mask.dim() == 4:
        mask = mask[:, 0]
    return mask.detach().to(torch.float64)


def region_shares(
    mask: torch.Tensor, labels: torch.Tensor, stride: float, offset: float
) -> torch.Tensor:
    """``(B, 3)`` shares of each mask's mass on :data:`REGIONS`.

    Args:
        mask: masks ``(B, 1, h, w)``.
        labels: ``(B, H, W)`` int: 0 background, 1 the queried digit, 2 another digit.
        stride, offset: the mask's geometry on the image.
    """
    image = mask_to_image(_grid(mask), (labels.shape[1], labels.shape[2]), stride, offset)
    total = image.sum(dim=(1, 2))
    shares = [(image * (labels == k)).sum(dim=(1, 2)) / total for k in (1, 2, 0)]
    return torch.stack(shares, dim=1)


def area_shares(labels: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` the image-area share of each region: what a uniform mask scores."""
    n = labels.shape[1] * labels.shape[2]
    return torch.stack([(labels == k).sum(dim=(1, 2)) / n for k in (1, 2, 0)], dim=1).double()


def relative_entropy(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` entropy of the normalised mask over its cells, divided by ``log(cells)``."""
    m = _grid(mask).flatten(1)
    p = m / m.sum(dim=1, keepdim=True)
    h = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(dim=1)
    return h / np.log(m.shape[1]) if m.shape[1] > 1 else torch.ones_like(h)


def tv_per_mass(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` total variation of the mask on its grid per unit of its mass."""
    m = _grid(mask)
    tv = (m[:, 1:] - m[:, :-1]).abs().sum(dim=(1, 2)) + (m[:, :, 1:] - m[:, :, :-1]).abs().sum(
        dim=(1, 2)
    )
    return tv / m.sum(dim=(1, 2))


def border_share(mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(B,)`` share of the mass on the outermost ring of the grid, and the ring's cell share."""
    m = _grid(mask)
    h, w = m.shape[1:]
    inner = m[:, 1:-1, 1:-1].sum(dim=(1, 2)) if h > 2 and w > 2 else torch.zeros(len(m))
    total = m.sum(dim=(1, 2))
    ring = 1 - max(h - 2, 0) * max(w - 2, 0) / (h * w)
    return (total - inner) / total, ring


def peak_region_share(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` share of the mass in the connected above-mean region around the peak."""
    from scipy import ndimage

    m = _grid(mask).numpy()
    out = np.ones(len(m))
    for k, cells in enumerate(m):
        above = cells > cells.mean()
        if not above.any():
            continue
        labels, _ = ndimage.label(above)  # 4-connectivity
        peak = np.unravel_index(np.argmax(cells), cells.shape)
        out[k] = cells[labels == labels[peak]].sum() / cells.sum()
    return torch.from_numpy(out)


def layer_agreement(
    a: torch.Tensor,
    geometry_a: tuple[float, float],
    b: torch.Tensor,
    geometry_b: tuple[float, float],
    size: tuple[int, int],
) -> torch.Tensor:
    """``(B,)`` Pearson correlation of two layers' masks projected onto the image."""
    pa = mask_to_image(_grid(a), size, *geometry_a).flatten(1)
    pb = mask_to_image(_grid(b), size, *geometry_b).flatten(1)
    pa = pa - pa.mean(dim=1, keepdim=True)
    pb = pb - pb.mean(dim=1, keepdim=True)
    denom = pa.norm(dim=1) * pb.norm(dim=1)
    corr = (pa * pb).sum(dim=1) / denom
    return torch.where(denom > 1e-12 * pa.shape[1], corr, torch.full_like(corr, float("nan")))


def mask_statistic_names(layers: int) -> list[str]:
    """The names :func:`mask_statistics` returns for ``layers`` masks, in its order."""
    names = []
    for k in range(layers):
        name = f"layer{k + 1}"
        for region in REGIONS:
            names += [f"{name}/{region}", f"{name}/area_{region}"]
        names += [f"{name}/entropy", f"{name}/tv", f"{name}/peak_region"]
        names += [f"{name}/border", f"{name}/area_border"]
        if k + 1 < layers:
            names.append(f"{name}-{k + 2}/agreement")
    return names


def mask_statistics(
    masks: Sequence[torch.Tensor],
    geometry: Sequence[tuple[float, float]],
    labels: torch.Tensor,
) -> dict[str, np.ndarray]:
    """Every statistic above for a batch, as ``{name: (B,) array}``.

    Names: ``layerK/<region>`` and ``layerK/area_<region>`` for each of :data:`REGIONS`,
    ``layerK/entropy``, ``layerK/tv``, ``layerK/peak_region``, ``layerK/border``,
    ``layerK/area_border`` and ``layerK-K+1/agreement``
    (``K`` 1-based).
    """
    size = (labels.shape[1], labels.shape[2])
    out: dict[str, np.ndarray] = {}
    areas = area_shares(labels).numpy()
    for k, (mask, (stride, offset)) in enumerate(zip(masks, geometry, strict=True)):
        name = f"layer{k + 1}"
        mask = mask.float()
        shares = region_shares(mask, labels, stride, offset).numpy()
        for r, region in enumerate(REGIONS):
            out[f"{name}/{region}"] = shares[:, r]
            out[f"{name}/area_{region}"] = areas[:, r]
        out[f"{name}/entropy"] = relative_entropy(mask).numpy()
        out[f"{name}/tv"] = tv_per_mass(mask).numpy()
        out[f"{name}/peak_region"] = peak_region_share(mask).numpy()
        border, ring = border_share(mask)
        out[f"{name}/border"] = border.numpy()
        out[f"{name}/area_border"] = np.full(len(border), ring)
        if k + 1 < len(masks):
            out[f"{name}-{k + 2}/agreement"] = layer_agreement(
                mask, geometry[k], masks[k + 1].float(), geometry[k + 1], size
            ).numpy()
    return out


def summarize_statistics(columns: dict[str, list[np.ndarray]]) -> dict[str, dict[str, float]]:
    """``{group: {statistic: mean over samples}}`` of :func:`mask_statistics` batches (``nan``
    samples left out), grouped by the part of the name before ``/``."""
    out: dict[str, dict[str, float]] = {}
    for name, parts in columns.items():
        group, stat = name.split("/")
        values = np.concatenate(parts)
        out.setdefault(group, {})[stat] = (
            float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        )
    return out
