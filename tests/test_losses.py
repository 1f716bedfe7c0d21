"""TSupCon and SupCon against a direct loop over the formulas of docs/methods.md §3.6."""

from __future__ import annotations

import math

import pytest
import torch

from ovss.losses import supcon_loss, text_loss, tsupcon_loss


def _loop_tsupcon(z, y, t, tau, literal):
    """Literally the formulas: l_t(z_i, t_{y_i}), l_t(t_k), l_im(z_i), with choices L1-L5."""
    m, k = z.shape[0], t.shape[0]
    dot = lambda a, b: float(a @ b) / tau  # noqa: E731
    total_t, n_t = 0.0, 0
    for c in range(k):
        members = [i for i in range(m) if y[i] == c]
        if not members:
            continue  # L3
        acc = 0.0
        for i in members:
            den = sum(math.exp(dot(z[i], t[q])) for q in range(k)) + sum(
                math.exp(dot(z[i], z[j])) for j in range(m) if j != i
            )
            acc += -dot(z[i], t[c]) + math.log(den)
        total_t += acc / len(members)
        n_t += 1
    total_im, n_im = 0.0, 0
    for i in range(m):
        den = sum(math.exp(dot(z[i], z[j])) for j in range(m) if j != i)
        positives = [l for l in range(m) if y[l] == y[i] and (literal or l != i)]  # noqa: E741
        if not positives:
            continue
        norm = sum(1 for l in range(m) if y[l] == y[i]) if literal else len(positives)  # noqa: E741
        total_im += sum(-dot(z[i], z[l]) + math.log(den) for l in positives) / norm  # noqa: E741
        n_im += 1
    normaliser = (m + k) if literal else (n_t + n_im)
    return (total_t + total_im) / normaliser, total_t / n_t, total_im / n_im


@pytest.mark.parametrize("literal", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_tsupcon_matches_the_formula(literal, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=1)
    t = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 4, 1, 0])  # class 3 absent; class 4 has one patch
    full, lt, lim = _loop_tsupcon(z, y, t, 0.1, literal)
    assert tsupcon_loss(z, y, t, tau=0.1, literal=literal).item() == pytest.approx(full, rel=1e-9)
    if not literal:
        assert text_loss(z, y, t, tau=0.1).item() == pytest.approx(lt, rel=1e-9)
        assert supcon_loss(z, y, tau=0.1).item() == pytest.approx(lim, rel=1e-9)


def test_the_check_can_fail():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(10, 8, generator=g, dtype=torch.float64), dim=1)
    t = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 0])
    full, _, _ = _loop_tsupcon(z, y, t, 0.07, False)
    assert tsupcon_loss(z, y, t, tau=0.05).item() != pytest.approx(full, rel=1e-3)
    assert tsupcon_loss(z, y, t, literal=True).item() != pytest.approx(full, rel=1e-3)


def test_gradients_pull_patches_to_their_text():
    g = torch.Generator().manual_seed(3)
    t = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1)
    y = torch.tensor([0, 1, 2] * 10)
    raw = torch.randn(30, 16, generator=g, requires_grad=True)
    opt = torch.optim.Adam([raw], lr=0.05)
    for _ in range(200):
        loss = tsupcon_loss(torch.nn.functional.normalize(raw, dim=1), y, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = (torch.nn.functional.normalize(raw, dim=1) @ t.T).argmax(1)
    assert (pred == y).all()
