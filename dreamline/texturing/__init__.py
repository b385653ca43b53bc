"""MVDiffusion texturing: correspondences between posed views through depth and the
correspondence-aware attention (CAA) blocks that make N denoising branches agree."""
