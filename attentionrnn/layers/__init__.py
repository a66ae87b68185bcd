"""Layers: AttentionRNN and its scan, the per-pixel reference, baselines and the factory."""
