"""A deep ensemble: K independently initialised copies of one architecture, trained side by side.

Averaging the logits of a few networks that differ only in their random start and the order in
which they saw the data is the cheapest known way past a single network's ceiling on a small
training set (docs/sweep.md, "Ensembles past a single network's ceiling", has the measurement).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Ensemble(nn.Module):
    """K member networks behind one model interface.

    Evaluation: (N, C, H, W) -> the members' mean logits (N, 1, H, W), like any other model.
    Training: (K*N, C, H, W), one batch per member concatenated -> (K*N, 1, H, W), member k's
    logits on rows k*N..(k+1)*N-1 only. The training loop gives each member its own shuffled,
    augmented batch, and one loss over all rows trains each member on its own prediction alone,
    which keeps the members as different as separately trained networks.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            if len(x) % len(self.members):
                raise ValueError(f"a training batch of {len(x)} does not split into {len(self.members)} members' batches")
            return torch.cat([m(part) for m, part in zip(self.members, x.chunk(len(self.members)))])
        return torch.stack([m(x) for m in self.members]).mean(0)
