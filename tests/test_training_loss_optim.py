"""NT-Xent against the paper's equations, LAMB, and the cosine schedule."""

from __future__ import annotations

import copy as copy_module
import itertools
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from afp_core.training.loss import NTXentLoss, nt_xent
from afp_core.training.optim import Lamb, WarmupCosine, scaled_lr


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: a second thread only adds synchronisation (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- NT-Xent -------------------------------------------------------------------------------


def loop_nt_xent(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    songs: list[int] | None = None,
) -> float:
    """Paper eq. 1-2 written as plain Python loops over the 2N items; with ``songs``, the
    other windows of an item's song are left out of its denominator."""
    z = [*anchors.tolist(), *positives.tolist()]
    n = len(anchors)
    song = [*(songs or range(n)), *(songs or range(n))]

    def sim(i: int, j: int) -> float:
        return sum(a * b for a, b in zip(z[i], z[j], strict=True)) / temperature

    def ell(i: int, j: int) -> float:
        denominator = sum(
            math.exp(sim(i, k)) for k in range(2 * n) if k != i and (k == j or song[k] != song[i])
        )
        return -math.log(math.exp(sim(i, j)) / denominator)

    return sum(ell(k, n + k) + ell(n + k, k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize(("n", "dim", "temperature"), [(2, 4, 0.5), (5, 8, 0.05), (8, 16, 0.1)])
def test_nt_xent_matches_the_equations(n: int, dim: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(n)
    anchors = F.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)
    positives = F.normalize(
        anchors + 0.5 * torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1
    )
    expected = loop_nt_xent(anchors, positives, temperature)
    got = nt_xent(anchors, positives, temperature)
    # nt_xent computes in float32: compare to float32 precision of logits up to 1/T = 20.
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert NTXentLoss(temperature)(anchors, positives).item() == pytest.approx(got.item())


def test_nt_xent_leaves_other_windows_of_a_song_out_of_the_denominator() -> None:
    gen = torch.Generator().manual_seed(3)
    anchors = F.normalize(torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=1)
    positives = F.normalize(
        anchors + 0.5 * torch.randn(6, 8, generator=gen, dtype=torch.float64), dim=1
    )
    songs = [0, 1, 0, 2, 1, 0]
    got = nt_xent(anchors, positives, 0.1, torch.tensor(songs)).item()
    assert got == pytest.approx(loop_nt_xent(anchors, positives, 0.1, songs), rel=1e-5)
    # A window nearly identical to another of its song (a repeated chorus) costs nothing
    # when the two share a song id, and is a hard negative when they do not.
    anchors[2] = F.normalize(anchors[0] + 1e-3, dim=0)
    same = nt_xent(anchors, positives, 0.1, torch.tensor(songs)).item()
    assert same == pytest.approx(loop_nt_xent(anchors, positives, 0.1, songs), rel=1e-5)
    assert same < nt_xent(anchors, positives, 0.1, torch.arange(6)).item()
    assert nt_xent(anchors, positives, 0.1, torch.arange(6)).item() == pytest.approx(
        nt_xent(anchors, positives, 0.1).item()
    )
    with pytest.raises(ValueError, match="songs must be"):
        nt_xent(anchors, positives, 0.1, torch.arange(5))


def test_nt_xent_is_low_for_matching_pairs_and_has_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(6, 32, generator=gen), dim=1)
    random_positives = F.normalize(torch.randn(6, 32, generator=gen), dim=1)
    assert nt_xent(anchors, anchors.clone()) < 0.01 < nt_xent(anchors, random_positives)
    leaf = anchors.clone().requires_grad_(True)
    nt_xent(leaf, random_positives).backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_nt_xent_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="both be"):
        nt_xent(torch.zeros(3, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.zeros(3, 4), torch.zeros(3, 4), temperature=0.0)


# --- LAMB ----------------------------------------------------------------------------------


def test_lamb_decreases_a_regression_loss() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    w_true = torch.randn(10, 1)
    y = x @ w_true + 0.01 * torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = Lamb(model.parameters(), lr=0.02)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_lamb_step_follows_the_definition() -> None:
    """First step: m^ = g, v^ = g^2, so u = g / (|g| + eps) (+ wd w); |delta w| = lr ||w||."""
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0]))  # ||w|| = 5
    g = torch.tensor([0.5, 2.0])
    lr, wd, eps = 0.1, 0.01, 1e-6
    opt = Lamb([w], lr=lr, weight_decay=wd, eps=eps)
    w.grad = g.clone()
    before = w.detach().clone()
    opt.step()
    u = g / (g.abs() + eps) + wd * before
    trust = before.norm() / u.norm()
    expected = before - lr * trust * u
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert opt.state[w]["trust_ratio"].item() == pytest.approx(trust.item(), rel=1e-6)
    assert (w.detach() - before).norm().item() == pytest.approx(lr * 5.0, rel=1e-5)


def test_lamb_trust_ratio_is_scale_free_and_one_for_zero_weights() -> None:
    # The step size of a layer does not depend on the gradient's scale...
    deltas = []
    for scale in (1e-3, 1.0, 1e3):
        w = torch.nn.Parameter(torch.ones(4))
        opt = Lamb([w], lr=0.01)
        w.grad = scale * torch.tensor([1.0, -2.0, 0.5, 3.0])
        opt.step()
        deltas.append((w.detach() - 1).norm().item())
    assert deltas == pytest.approx([deltas[0]] * 3, rel=1e-4)
    assert deltas[0] == pytest.approx(0.01 * 2.0, rel=1e-4)  # lr * ||w|| = 0.01 * 2
    # ...and a zero tensor (a fresh bias) gets ratio 1: a plain Adam step.
    b = torch.nn.Parameter(torch.zeros(3))
    opt = Lamb([b], lr=0.01)
    b.grad = torch.tensor([1.0, -1.0, 2.0])
    opt.step()
    assert opt.state[b]["trust_ratio"].item() == 1.0
    assert torch.allclose(b.detach(), torch.tensor([-0.01, 0.01, -0.01]), atol=1e-7)


def test_lamb_state_dict_round_trip() -> None:
    w = torch.nn.Parameter(torch.randn(5))
    opt = Lamb([w], lr=0.01, weight_decay=0.1)
    for _ in range(3):
        w.grad = torch.randn(5)
        opt.step()
    copy = torch.nn.Parameter(w.detach().clone())
    opt2 = Lamb([copy], lr=0.01, weight_decay=0.1)
    opt2.load_state_dict(copy_module.deepcopy(opt.state_dict()))  # as if read from a file
    grad = torch.randn(5)
    w.grad, copy.grad = grad.clone(), grad.clone()
    opt.step()
    opt2.step()
    assert torch.equal(w.detach(), copy.detach())


# --- schedule --------------------------------------------------------------------------------


def test_cosine_schedule_with_warmup() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = Lamb([w], lr=0.003)
    sched = WarmupCosine(opt, total_steps=100, min_lr=1e-7, warmup_steps=10)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.0003)  # 1/10 of the way up
    assert lrs[9] == pytest.approx(0.003)
    assert lrs[10] == pytest.approx(0.003)
    assert lrs[55] == pytest.approx(1e-7 + (0.003 - 1e-7) / 2)  # half-way down
    assert lrs[100] == pytest.approx(1e-7) and lrs[109] == pytest.approx(1e-7)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_schedule_resumes_exactly() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = Lamb([w], lr=0.01)
    sched = WarmupCosine(opt, total_steps=50)
    for _ in range(17):
        opt.step()
        sched.step()
    opt2 = Lamb([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched2 = WarmupCosine(opt2, total_steps=50)
    sched2.load_state_dict(sched.state_dict())
    for _ in range(5):
        opt.step()
        opt2.step()
        sched.step()
        sched2.step()
        assert sched.get_last_lr() == sched2.get_last_lr()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_scaled_lr_follows_the_authors_rule() -> None:
    assert scaled_lr(0.003, 640) == pytest.approx(0.003)
    assert scaled_lr(0.003, 512) == pytest.approx(0.0024)
    assert scaled_lr(0.003, 512, 0) == 0.003
