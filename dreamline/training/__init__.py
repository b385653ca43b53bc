"""Training: the generic loop (`dreamline.training.loop`) shared by every training stage."""
