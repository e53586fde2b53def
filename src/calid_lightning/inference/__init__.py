"""Autoregressive volume upsampling and NIfTI input/output."""
