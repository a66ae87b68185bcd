"""Networks of the experiments: the PAN backbone of attribute prediction (E1)."""

from attentionrnn.models.pan import MASK_GEOMETRY, PAN, TASKS

__all__ = ["MASK_GEOMETRY", "PAN", "TASKS"]
