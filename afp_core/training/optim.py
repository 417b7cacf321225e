"""LAMB and the warm-up + cosine learning-rate schedule (paper §4.3).

torch has no LAMB, and no small well-kept package provides one without pulling
torchvision (docs/design.md §2.1), so it is written here after You et al. (2020),
"Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", algorithm 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class Lamb(Optimizer):
    """LAMB: Adam moments with a layer-wise trust ratio.

    For each parameter tensor w (a "layer") with gradient g, at step t::

        m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
        m^ = m / (1 - b1^t)              v^ = v / (1 - b2^t)      (bias_correction)
        u = m^ / (sqrt(v^) + eps) + weight_decay * w
        r = ||w|| / ||u||   (1 when either norm is 0; at most trust_clip if set)
        w = w - lr * r * u

    so each tensor moves by ``lr * ||w||`` in norm whatever the gradient scale. The last
    ratio of each tensor is kept in ``state[p]["trust_ratio"]`` for inspection. A group
    with ``adapt=False`` uses r = 1 (plain AdamW-style steps), e.g. for biases.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        trust_clip: float | None = None,
        adapt: bool = True,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if trust_clip is not None and trust_clip <= 0:
            raise ValueError(f"trust_clip must be positive, got {trust_clip}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "bias_correction": bias_correction,
            "trust_clip": trust_clip,
            "adapt": adapt,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["bias_correction"]:
                    m_hat = exp_avg / (1 - beta1**t)
                    v_hat = exp_avg_sq / (1 - beta2**t)
                else:
                    m_hat, v_hat = exp_avg, exp_avg_sq
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                if group["adapt"]:
                    trust = _trust_ratio(p, update)
                else:
                    trust = torch.ones((), device=p.device)
                if group["trust_clip"] is not None:
                    trust = trust.clamp(max=group["trust_clip"])
                state["trust_ratio"] = trust
                p.add_(update * trust, alpha=-group["lr"])
        return loss


def _trust_ratio(weight: Tensor, update: Tensor) -> Tensor:
    """||w|| / ||u||, or 1 where either norm is zero (as a 0-d tensor: no host sync)."""
    w_norm = weight.detach().float().norm()
    u_norm = update.float().norm()
    ratio = w_norm / u_norm.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))


def scaled_lr(lr: float, batch: int, reference_batch: int = 640) -> float:
    """``lr * batch / reference_batch`` (the authors' scaling); ``reference_batch`` 0: ``lr``."""
    return lr if reference_batch == 0 else lr * batch / reference_batch


class WarmupCosine(LRScheduler):
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``.

    Step t (0-based, one ``step()`` per batch) gets ``base * (t + 1) / warmup_steps``
    during warm-up, then ``min_lr + (base - min_lr) * (1 + cos(pi * p)) / 2`` with
    ``p = (t - warmup_steps) / (total_steps - warmup_steps)``, and ``min_lr`` after the
    end. Closed form: the state is only the step counter, so resuming is exact.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        min_lr: float = 1e-7,
        warmup_steps: int = 0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps], got {warmup_steps}")
        self.total_steps = total_steps
        self.min_lr = min_lr
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, base_lr: float) -> float:
        """The rate of step ``step`` for a group whose base rate is ``base_lr``."""
        floor = min(self.min_lr, base_lr)
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:  # type: ignore[override]
        # the groups' rates are floats (torch also allows tensors, which we never pass)
        return [self.lr_at(self.last_epoch, float(base)) for base in self.base_lrs]
