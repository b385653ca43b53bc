"""Text-to-3D distillation: camera sampling, the optimisation loop, and asset export."""
