"""NT-Xent, the contrastive loss of the paper (eq. 1-2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def nt_xent(
    anchors: Tensor, positives: Tensor, temperature: float = 0.05, songs: Tensor | None = None
) -> Tensor:
    """Mean NT-Xent loss of a batch of N clean anchors and their N augmented positives.

    ``anchors`` (N, D) and ``positives`` (N, D) are unit vectors; row k of ``positives``
    is the twin of row k of ``anchors``. With z = [anchors; positives] (2N rows),
    ``l(i, j) = -log(exp(<z_i, z_j>/T) / sum_{k != i} exp(<z_i, z_k>/T))`` (eq. 1) and
    ``L = 1/(2N) sum_k [l(k, N+k) + l(N+k, k)]`` (eq. 2): one cross-entropy over the
    similarity rows, with each item's own similarity left out of its denominator.

    ``songs`` (N,), the song of each anchor, is for batches that take several windows of
    one song: another window of the same song is left out of the denominator too, as
    neither a positive nor a negative (songs repeat material: a chorus is not a negative
    of itself). When every song differs, the loss is eq. 2 unchanged.
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
    left_out = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    if songs is not None:
        if songs.shape != (n,):
            raise ValueError(f"songs must be (N,) = ({n},), got {tuple(songs.shape)}")
        twice = torch.cat([songs, songs]).to(z.device)
        left_out |= twice[:, None] == twice[None, :]
        left_out[torch.arange(2 * n, device=z.device), targets] = False
    logits = logits.masked_fill(left_out, float("-inf"))
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
