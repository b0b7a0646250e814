"""The y = 2x - 1 model: one input, one output, one linear layer."""
from __future__ import annotations

import torch
from torch import nn


class SimpleLinearModel(nn.Module):
    """A single ``nn.Linear(1, 1)``; after training, weight ~ 2 and bias ~ -1."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 1) -> (N, 1)
        return self.linear(x)
