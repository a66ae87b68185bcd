"""Where a mask falls: a mask projected onto the image, box regions, attention correctness.

Attention correctness (Liu et al., "Attention Correctness in Neural Image Captioning", AAAI 2017)
is the share of the attention mask's mass that falls on the region it should attend to: the mask is
projected onto the image, normalised to sum 1, and summed over the region. A uniform mask scores
the region's share of the image area; a mask entirely inside the region scores 1. Shared by the
experiments that score masks against the generated data's boxes and strokes (E1, E4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_correctness", "box_regions", "mask_to_image"]


def mask_to_image(
    mask: torch.Tensor,
    size: tuple[int, int],
    stride: float | None = None,
    offset: float = 0.0,
) -> torch.Tensor:
    """Project masks ``(B, 1, h, w)`` (or ``(B, h, w)``) onto an image of ``size`` ``(H, W)``.

    With ``stride=None`` the mask is simply resized bilinearly to the image (Liu et al.). With a
    ``stride`` and ``offset`` (in pixels) the projection follows the network's geometry: mask cell
    ``(i, j)`` is centred on image pixel ``(offset + stride*i, offset + stride*j)``, values in
    between are interpolated bilinearly and pixels beyond the outer cell centres take the edge
    value. This matters for valid convolutions, whose deep maps do not cover the image border
    evenly (PAN's 4×4 map has centres at pixels 22.5 … 70.5 of 100).

    Returns:
        Non-negative masks of shape ``(B, H, W)`` (float32 or wider).
    """
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (B, 1, h, w) or (B, h, w), got {tuple(mask.shape)}")
    mask = mask.to(torch.promote_types(mask.dtype, torch.float32))
    height, width = size
    if stride is None:
        out = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
        return out[:, 0].clamp_min(0)
    b, _, h, w = mask.shape

    def axis(n_pix: int, n_cells: int) -> torch.Tensor:
        u = (torch.arange(n_pix, dtype=mask.dtype, device=mask.device) - offset) / stride
        if n_cells == 1:
            return torch.zeros_like(u)
        return (u.clamp(0, n_cells - 1) / (n_cells - 1)) * 2 - 1

    gy, gx = torch.meshgrid(axis(height, h), axis(width, w), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(b, height, width, 2)
    out = F.grid_sample(mask, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, 0].clamp_min(0)


def box_regions(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boolean regions ``(B, H, W)`` of boxes ``(B, 4)`` ``(x0, y0, x1, y1)``, end exclusive."""
    boxes = torch.as_tensor(boxes)
    height, width = size
    ys = torch.arange(height, device=boxes.device)[None, :, None]
    xs = torch.arange(width, device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, k, None, None] for k in range(4))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def attention_correctness(
    mask: torch.Tensor,
    region: torch.Tensor,
    stride: float | None = None,
    offset: float = 0.0,
) -> torch.Tensor:
    """Share of each mask's mass inside its region (Liu et al. 2017).

    Args:
        mask: attention masks ``(B, 1, h, w)`` or ``(B, h, w)``, non-negative.
        region: boolean regions ``(B, H, W)`` on the image (the queried digit's box or strokes).
        stride, offset: geometry of the mask on the image, see :func:`mask_to_image`; with
            ``stride=None`` the mask is resized to the image.

    Returns:
        Correctness per sample, shape ``(B,)``, in ``[0, 1]``; ``nan`` for a mask with no mass.
    """
    region = torch.as_tensor(region, dtype=torch.bool, device=mask.device)
    if region.dim() != 3:
        raise ValueError(f"region must have shape (B, H, W), got {tuple(region.shape)}")
    image_mask = mask_to_image(mask, (region.shape[1], region.shape[2]), stride, offset)
    total = image_mask.sum(dim=(1, 2))
    inside = (image_mask * region).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total, torch.full_like(total, float("nan")))
