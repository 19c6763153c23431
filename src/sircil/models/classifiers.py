"""Classifier heads that grow by appending the rows of each step's new classes."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class IncrementalLinear(nn.Module):
    """Linear head; ``expand`` keeps the old rows and initializes the new ones as nn.Linear does."""

    def __init__(self, in_features: int, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.weight = nn.Parameter(torch.empty(0, in_features))
        self.bias = nn.Parameter(torch.empty(0)) if bias else None

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def expand(self, n_new: int) -> None:
        device = self.weight.device
        new_w = torch.empty(n_new, self.in_features, device=device)
        nn.init.kaiming_uniform_(new_w, a=math.sqrt(5))
        self.weight = nn.Parameter(torch.cat([self.weight.data, new_w]))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            new_b = torch.empty(n_new, device=device).uniform_(-bound, bound)
            self.bias = nn.Parameter(torch.cat([self.bias.data, new_b]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)
