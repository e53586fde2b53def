"""Shared pytest settings: small thread count so parallel CI stays predictable."""

import torch

torch.set_num_threads(2)
