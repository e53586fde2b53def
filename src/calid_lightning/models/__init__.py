"""LightningModules: VAE, spatial and 2D+T interpolators, baselines, segmenter."""
