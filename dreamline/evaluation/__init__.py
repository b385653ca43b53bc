"""Metrics: image-text scores, image-set quality, multi-view consistency."""
