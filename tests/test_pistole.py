"""Invariants of PISTOLE's masks (explorer/merging/pistole.py) and scores (explorer/calibrate/pistole.py)."""
from __future__ import annotations

import pytest
import torch

from explorer.calibrate import pistole as cal
from explorer.merging import pistole as ps

SEGMENTS = [(0, 10), (10, 110), (110, 113), (113, 400)]


def _grads(seed=0, n=400, V=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * torch.linspace(0.1, 3, n) for _ in range(V)]


def test_scores_in_unit_interval_and_one_at_each_layer_max():
    g = _grads()[0]
    g[110:113] = 0.0  # a layer without gradient (BatchNorm statistics) scores 0
    for gamma in (0.5, 1.0, 2.0):
        s = ps.normalised_scores(g, SEGMENTS, gamma)
        assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
        for a, b in SEGMENTS:
            expected = 0.0 if a == 110 else 1.0
            assert float(s[a:b].max()) == expected
    # gamma is a power on |g| / max: exact at a known coordinate
    s = ps.normalised_scores(torch.tensor([2.0, -4.0, 1.0]), [(0, 3)], 2.0)
    assert s.tolist() == [0.25, 1.0, 0.0625]
    with pytest.raises(ValueError, match="gamma"):
        ps.normalised_scores(g, SEGMENTS, 0.0)


def test_top_q_capping_counts_and_edges():
    s = torch.arange(100, dtype=torch.float32) / 99
    capped = ps.cap_top_q(s, 0.1, [(0, 100)])
    assert int((capped == s[89]).sum()) == 11           # 10 capped + the threshold itself
    assert torch.equal(capped[:90], s[:90])
    assert torch.equal(ps.cap_top_q(s, 0.0, [(0, 100)]), s)   # q = 0: no capping
    assert bool((ps.cap_top_q(s, 1.0, [(0, 100)]) == 0).all())  # q = 1: all at the minimum
    assert torch.equal(ps.cap_top_q(s, 0.005, [(0, 100)]), s)  # floor(0.5) = 0 capped
    with pytest.raises(ValueError, match="q must"):
        ps.cap_top_q(s, 1.5, [(0, 100)])
    with pytest.raises(ValueError, match="q_scope"):
        ps.cap_top_q(s, 0.1, [(0, 100)], "per_tensor")


def test_q_scope_per_layer_caps_each_layer_global_one_threshold():
    s = torch.cat([torch.linspace(0, 1, 50), torch.linspace(0, 0.1, 50)])
    per = ps.cap_top_q(s, 0.1, [(0, 50), (50, 100)], "per_layer")
    glob = ps.cap_top_q(s, 0.1, [(0, 50), (50, 100)], "global")
    assert int((per[:50] < s[:50]).sum()) == 5 and int((per[50:] < s[50:]).sum()) == 5
    assert int((glob < s).sum()) == 10 and torch.equal(glob[50:], s[50:])


def test_masks_in_unit_interval_monotone_in_kappa_and_complementary():
    grads, robust = _grads(), [False, True]
    prev = None
    for kappa in (0.0, 1.0, 1.5, 2.0, 4.0):
        masks = ps.pistole_masks(grads, robust, SEGMENTS, kappa=kappa, q=0.05)
        for m in masks:
            assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
        if kappa == 0.0:
            assert all(bool((m == 1).all()) for m in masks)  # no masking: plain weighted addition
        if prev is not None:
            assert all(bool((m <= p).all()) for m, p in zip(masks, prev))
        prev = masks
    # The natural vector's mask is built from the robust vector's scores and vice versa.
    s_rob = ps.cap_top_q(ps.normalised_scores(grads[1], SEGMENTS, 1.0), 0.05, SEGMENTS)
    m = ps.pistole_masks(grads, robust, SEGMENTS, kappa=2.0, q=0.05)
    assert torch.allclose(m[0], (1 - s_rob) ** 2)
    with pytest.raises(ValueError, match="kappa"):
        ps.pistole_masks(grads, robust, SEGMENTS, kappa=-1.0)


def test_capping_keeps_masks_away_from_zero():
    grads = _grads()
    no_cap = ps.pistole_masks(grads, [False, True], SEGMENTS, kappa=1.0, q=0.0)
    capped = ps.pistole_masks(grads, [False, True], SEGMENTS, kappa=1.0, q=0.4)
    assert float(no_cap[0].min()) == 0.0              # each layer's most sensitive coordinate
    assert float(capped[0].min()) > 0.0               # floor(0.4 n) >= 1 in every layer
    assert all(bool((c >= m).all()) for c, m in zip(capped, no_cap))


def test_masks_zero_outside_covered_segments_and_one_without_counterpart():
    grads = _grads(V=3)
    masks = ps.pistole_masks(grads, [False, False, True], SEGMENTS[:2], kappa=1.0, q=0.0)
    assert all(bool((m[110:] == 0).all()) for m in masks)
    # Two natural vectors share the robust counterpart; the robust one takes the max of theirs.
    assert torch.equal(masks[0], masks[1])
    alone = ps.pistole_masks(grads[:2], [False, False], SEGMENTS, kappa=3.0)
    assert all(bool((m == 1).all()) for m in alone)


def test_vision_segments_by_key_prefix():
    names, segs = ["visual.a", "text.b", "visual.c"], [(0, 2), (2, 5), (5, 6)]
    assert ps.vision_segments(names, segs) == [(0, 2), (5, 6)]
    with pytest.raises(ValueError, match="vision tower"):
        ps.vision_segments(["text.b"], [(0, 3)])


# ---------------------------------------------------------------- scores (calibrate/pistole.py)
def _linear_model(n_in=6, n_cls=3):
    """A softmax regression as a flat-parameter model: the smallest real ``logits = f(theta, x)``."""
    def logits_fn(theta, x):
        w = theta[: n_in * n_cls].view(n_cls, n_in)
        return x @ w.t() + theta[n_in * n_cls:]
    return logits_fn, n_in * n_cls + n_cls


def _data(seed=0, n=32, n_in=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("eta,beta,steps", [(0.05, 0.5, 4), (0.02, 1.0, 3), (0.1, 0.3, 6)])
def test_trajectory_stays_in_projection_ball(eta, beta, steps):
    f, N = _linear_model()
    x, y = _data()
    theta0 = torch.randn(N, generator=torch.Generator().manual_seed(1))
    segs = [(0, 18)]  # the "vision tower": the weights; the bias stays put

    def grad_fn(theta, k):
        assert torch.equal(theta[18:], theta0[18:])
        return cal.weighted_gradient(f, theta, x, y, torch.full((32,), 1 / 32)), 1.0

    total, dists = cal.trajectory_scores(grad_fn, theta0, segs, steps=steps, eta=eta, beta=beta)
    radius = eta * float(theta0[:18].norm())
    assert dists[0] == 0.0 and len(dists) == steps + 1
    assert all(d <= radius * (1 + 1e-5) for d in dists)
    assert dists[min(steps, int(1 / beta) + 1)] == pytest.approx(radius, rel=1e-4)  # reaches the boundary
    assert bool((total[18:] == 0).all()) and float(total.min()) >= 0.0


def test_single_point_scores_are_the_gradient_magnitude():
    f, N = _linear_model()
    x, y = _data()
    theta0 = torch.randn(N, generator=torch.Generator().manual_seed(2))
    w = torch.full((32,), 1 / 32)
    g = cal.weighted_gradient(f, theta0, x, y, w)
    total, dists = cal.trajectory_scores(lambda th, k: (cal.weighted_gradient(f, th, x, y, w), 1.0), theta0,
                                         [(0, N)], steps=0, eta=0.1, beta=0.5)
    assert torch.equal(total, g.abs()) and dists == [0.0]
    ce = torch.nn.functional.cross_entropy(f(theta0.requires_grad_(True), x), y)  # mean CE
    (ref,) = torch.autograd.grad(ce, theta0)
    assert torch.allclose(g, ref, atol=1e-6)


def test_trajectory_normalises_pci_over_all_steps_so_heavier_steps_weigh_more():
    """G = sum_k |g_k| / sum_k m_k: a step whose PCI mass is 3x another's counts 3x (v1 gave 1:1)."""
    f, N = _linear_model()
    x, y = _data()
    theta0 = torch.randn(N, generator=torch.Generator().manual_seed(4))
    masses = [1.0, 3.0, 0.5]
    seen = []

    def grad_fn(theta, k, scale=1.0):
        g = cal.weighted_gradient(f, theta, x, y, torch.full((32,), masses[k] / 32))   # mass m_k
        seen.append(g.clone())
        return g * scale, masses[k] * scale

    total, dists = cal.trajectory_scores(grad_fn, theta0, [(0, N)], steps=2, eta=0.05, beta=0.5)
    expected = sum(g.abs() for g in seen) / sum(masses)
    assert torch.allclose(total, expected, rtol=1e-6, atol=0)
    # The weight of step k is m_k / sum m: the unit-mass gradients enter as m_k |g_unit_k| / sum m.
    unit = [g / m for g, m in zip(seen, masses)]
    assert torch.allclose(total, sum(m * u.abs() for m, u in zip(masses, unit)) / 4.5, rtol=1e-5)
    # Scaling every weight (and so every mass) changes neither the path nor G.
    seen.clear()
    total2, dists2 = cal.trajectory_scores(lambda th, k: grad_fn(th, k, 1e3), theta0, [(0, N)], steps=2,
                                           eta=0.05, beta=0.5)
    assert dists2 == pytest.approx(dists, rel=1e-6) and torch.allclose(total2, total, rtol=1e-5)
    with pytest.raises(ValueError, match="criticality index is 0"):
        cal.trajectory_scores(lambda th, k: (torch.zeros(N), 0.0), theta0, [(0, N)], steps=1, eta=0.1, beta=0.5)


def test_pci_index_is_the_antithetic_mean_of_the_probability_ratio_and_seeded():
    f, N = _linear_model()
    x, y = _data()
    theta = torch.randn(N, generator=torch.Generator().manual_seed(3))
    segs, sigma, samples = [(0, 18)], 0.05, 3
    cost = cal.Cost()
    w1 = cal.pci_index(f, theta, x, y, segs, samples=samples, sigma=sigma,
                       generator=torch.Generator().manual_seed(0), cost=cost)
    w2 = cal.pci_index(f, theta, x, y, segs, samples=samples, sigma=sigma, generator=torch.Generator().manual_seed(0))
    w3 = cal.pci_index(f, theta, x, y, segs, samples=samples, sigma=sigma, generator=torch.Generator().manual_seed(1))
    assert torch.equal(w1, w2) and not torch.equal(w1, w3) and float(w1.min()) >= 0.0
    assert cost.forward == 2 * samples + 1 and cost.backward == 0
    # The same draws by hand: |mean_j (p(theta+D_j) + p(theta-D_j)) / 2p(theta) - 1|, the bias untouched.
    gen = torch.Generator().manual_seed(0)
    p = lambda th: torch.softmax(f(th, x).double(), -1).gather(1, y.view(-1, 1)).squeeze(1)  # noqa: E731
    std = sigma * float(theta[:18].norm()) / 18 ** 0.5
    acc = torch.zeros(32, dtype=torch.float64)
    for _ in range(samples):
        d = torch.zeros(N)
        d[:18] = std * torch.randn(18, generator=gen)
        acc += (p(theta + d) + p(theta - d)) / (2 * p(theta)) - 1
    assert torch.allclose(w1.double(), (acc / samples).abs(), rtol=1e-5, atol=1e-9)
    # Off (no draws, or no perturbation): weight 1 for every sample.
    for kw in (dict(samples=0, sigma=0.05), dict(samples=4, sigma=0.0)):
        assert torch.equal(cal.pci_index(f, theta, x, y, segs, generator=torch.Generator(), **kw), torch.ones(32))


def test_pci_index_tracks_curvature_second_order_in_sigma():
    """Antithetic draws cancel the first-order term: with the same draws, halving sigma divides the
    index by 4 (curvature, sigma^2), where one-sided draws would divide it by about 2 (noise, sigma)."""
    f, N = _linear_model()
    x, y = _data()
    x, theta = x.double(), torch.randn(N, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    idx = [cal.pci_index(f, theta, x, y, [(0, 18)], samples=4, sigma=s,
                         generator=torch.Generator().manual_seed(0)).double() for s in (2e-3, 1e-3)]
    ratio = idx[0] / idx[1]
    assert torch.allclose(ratio, torch.full_like(ratio, 4.0), rtol=1e-2)


def test_pci_index_confident_samples_are_resolved_in_float64():
    """Samples at 1 - p_c down to 1e-30 (float32 and log_softmax: p = 1, a ratio of 0) keep a non-zero index."""
    f, N = _linear_model()
    x, y = _data(n=4)
    theta = torch.zeros(N)
    theta[:18] = (torch.nn.functional.one_hot(y, 3).float().t() @ x)[:, :6].reshape(-1) * 8.0
    p32 = torch.softmax(f(theta, x), -1).gather(1, y.view(-1, 1))
    assert bool((p32 == 1.0).any())
    w = cal.pci_index(f, theta, x, y, [(0, 18)], samples=4, sigma=0.01, generator=torch.Generator().manual_seed(0))
    assert bool((w > 0).all())


def test_pci_upweights_samples_whose_confidence_noise_moves_most():
    f, N = _linear_model()
    x, y = _data(n=2)
    x[0] *= 0.01   # near the origin: parameter noise barely moves its logits
    x[1] *= 10.0   # far from it: the same noise moves its logits 1000x more
    theta = torch.zeros(N)
    theta[:18] = 0.1
    w = cal.pci_index(f, theta, x, y, [(0, 18)], samples=32, sigma=0.2,
                      generator=torch.Generator().manual_seed(0))
    assert float(w[1]) > float(w[0])


def test_project_ball():
    c = torch.zeros(3)
    assert torch.equal(cal.project_ball(torch.tensor([0.1, 0.0, 0.0]), c, 1.0), torch.tensor([0.1, 0.0, 0.0]))
    out = cal.project_ball(torch.tensor([3.0, 4.0, 0.0]), c, 1.0)
    assert torch.allclose(out, torch.tensor([0.6, 0.8, 0.0]))


def _inputs(context):
    from explorer.merging import MergeInputs
    names = ["visual.a", "visual.b", "visual.c", "text.d"]
    taus = [t.clone() for t in _grads(seed=5)]
    return MergeInputs(taus=taus, segments=SEGMENTS, names=names, context=context)


def test_coefficients_are_lambda_times_mask_on_the_vision_tower_and_base_outside():
    from explorer.merging.base import apply_coefficients
    grads = _grads(seed=6)
    inp = _inputs({"pistole_grads": grads, "pistole_robust": [False, True]})
    coeffs = ps.pistole_coefficients(inp, [0.2, 0.8], kappa=2.0, q=0.01, gamma=1.0, q_scope="per_layer",
                                     outside="base")
    masks = ps.pistole_masks(grads, [False, True], SEGMENTS[:3], kappa=2.0, q=0.01)
    assert torch.equal(coeffs[0], masks[0] * 0.2) and torch.equal(coeffs[1], masks[1] * 0.8)
    assert all(bool((c[113:] == 0).all()) for c in coeffs)            # the text tower keeps theta_0
    pre = torch.randn(400, generator=torch.Generator().manual_seed(7))
    fts = [pre + t for t in inp.taus]
    zero = ps.pistole_coefficients(inp, [0.0, 0.0], kappa=2.0, q=0.01, gamma=1.0, q_scope="per_layer")
    assert zero == [0.0, 0.0] and torch.equal(apply_coefficients(pre, fts, zero), pre)
    # kappa = 0: plain weighted addition on the vision tower, no scores needed
    plain = ps.pistole_coefficients(_inputs({}), [0.2, 0.8], kappa=0.0, q=0.01, gamma=1.0, q_scope="global",
                                    outside="base")
    assert bool((plain[0][:113] == torch.tensor(0.2)).all()) and bool((plain[0][113:] == 0).all())
    with pytest.raises(ValueError, match="pistole_grads"):
        ps.pistole_coefficients(_inputs({}), [0.2, 0.8], kappa=1.0, q=0.01, gamma=1.0, q_scope="global")


def test_outside_the_vision_tower_each_vector_keeps_its_plain_coefficient_by_default():
    grads = _grads(seed=6)
    inp = _inputs({"pistole_grads": grads, "pistole_robust": [False, True]})
    coeffs = ps.pistole_coefficients(inp, [0.3, 0.7], kappa=2.0, q=0.01, gamma=1.0, q_scope="per_layer")
    masks = ps.pistole_masks(grads, [False, True], SEGMENTS[:3], kappa=2.0, q=0.01)
    assert torch.equal(coeffs[0][:113], masks[0][:113] * 0.3) and torch.equal(coeffs[1][:113], masks[1][:113] * 0.7)
    assert bool((coeffs[0][113:] == torch.tensor(0.3)).all()) and bool((coeffs[1][113:] == torch.tensor(0.7)).all())
    # kappa = 0 is then task arithmetic on every coordinate (the ablation's first row)
    plain = ps.pistole_coefficients(_inputs({}), [0.3, 0.7], kappa=0.0, q=0.01, gamma=1.0, q_scope="global")
    assert bool((plain[0] == torch.tensor(0.3)).all()) and bool((plain[1] == torch.tensor(0.7)).all())
    with pytest.raises(ValueError, match="outside must be one of weighted, base, got 'text'"):
        ps.pistole_coefficients(inp, [0.3, 0.7], kappa=2.0, q=0.01, gamma=1.0, q_scope="global", outside="text")
