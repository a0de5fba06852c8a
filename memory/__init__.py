"""Hierarchical markdown memory with a fixed capacity."""
