"""NT-Xent, the contrastive loss of the paper (eq. 1-2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def nt_xent(anchors: Tensor, positives: Tensor, temperature: float = 0.05) -> Tensor:
    """Mean NT-Xent loss of a batch of N clean anchors and their N augmented positives.

    ``anchors`` (N, D) and ``positives`` (N, D) are unit vectors; row k of ``positives``
    is the twin of row k of ``anchors``. With z = [anchors; positives] (2N rows),
    ``l(i, j) = -log(exp(<z_i, z_j>/T) / sum_{k != i} exp(<z_i, z_k>/T))`` (eq. 1) and
    ``L = 1/(2N) sum_k [l(k, N+k) + l(N+k, k)]`` (eq. 2): one cross-entropy over the
    similarity rows, with each item's own similarity left out of its denominator.
    """
    if anchors.shape != positives.shape or anchors.ndim != 2:
        raise ValueError(
            f"anchors and positives must both be (N, D), got {tuple(anchors.shape)} "
            f"and {tuple(positives.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = anchors.shape[0]
    z = torch.cat([anchors, positives]).float()  # the logits in fp32, also under autocast
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class NTXentLoss(nn.Module):
    """``nt_xent`` as a module with a fixed temperature (0.05 as in the authors' code)."""

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, anchors: Tensor, positives: Tensor) -> Tensor:
        return nt_xent(anchors, positives, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
