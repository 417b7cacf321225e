"""Projection heads: map an encoder's feature vector onto the unit sphere."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DivEncProjection(nn.Module):
    """The paper's "div-enc" projection (§4.1, after NAFP).

    The ``in_dim`` input is split into ``dim`` consecutive slices of ``in_dim // dim``;
    slice ``i`` goes through its own ``Linear(slice, hidden) -> ELU -> Linear(hidden, 1)``
    and gives output coordinate ``i``. The ``dim`` scalars are L2-normalised.

    All slices run at once with batched weights:

    - ``weight1``: (dim, slice, hidden), ``bias1``: (dim, hidden)
    - ``weight2``: (dim, hidden), ``bias2``: (dim,)

    Shapes: ``forward(x: (B, in_dim)) -> (B, dim)`` unit vectors.
    """

    def __init__(self, in_dim: int, dim: int = 128, hidden: int = 32) -> None:
        super().__init__()
        if in_dim <= 0 or dim <= 0 or hidden <= 0:
            raise ValueError(
                f"DivEncProjection: in_dim, dim and hidden must be positive, "
                f"got in_dim={in_dim}, dim={dim}, hidden={hidden}"
            )
        if in_dim % dim:
            raise ValueError(
                f"DivEncProjection: in_dim={in_dim} is not divisible by dim={dim} "
                "(each output coordinate needs an equal slice of the input)"
            )
        self.in_dim = in_dim
        self.dim = dim
        self.hidden = hidden
        self.slice = in_dim // dim
        self.weight1 = nn.Parameter(torch.empty(dim, self.slice, hidden))
        self.bias1 = nn.Parameter(torch.empty(dim, hidden))
        self.weight2 = nn.Parameter(torch.empty(dim, hidden))
        self.bias2 = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise each slice's layers as ``nn.Linear`` would: U(-1/sqrt(fan_in), +)."""
        # nn.Linear's kaiming_uniform_(a=sqrt(5)) reduces to this bound for weights too.
        bound1 = 1.0 / math.sqrt(self.slice)
        bound2 = 1.0 / math.sqrt(self.hidden)
        with torch.no_grad():
            self.weight1.uniform_(-bound1, bound1)
            self.bias1.uniform_(-bound1, bound1)
            self.weight2.uniform_(-bound2, bound2)
            self.bias2.uniform_(-bound2, bound2)

    def project_unnormalised(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, dim): the per-slice MLP outputs before L2 normalisation."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"DivEncProjection expects (batch, {self.in_dim}), got {tuple(x.shape)}"
            )
        slices = x.reshape(x.shape[0], self.dim, self.slice)  # (B, dim, slice)
        hidden = torch.einsum("bds,dsh->bdh", slices, self.weight1) + self.bias1
        hidden = F.elu(hidden)
        return torch.einsum("bdh,dh->bd", hidden, self.weight2) + self.bias2

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, dim) unit vectors."""
        return F.normalize(self.project_unnormalised(x), p=2.0, dim=1)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, dim={self.dim}, hidden={self.hidden}"
