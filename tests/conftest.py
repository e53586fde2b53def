"""Shared pytest settings: one intra-op thread: tiny test models run faster and CI stays predictable."""

import torch

torch.set_num_threads(1)
