"""OT path, conversions between velocity / denoiser / score, the Gaussian constants, the loss."""

import math

import torch

from llmflow import flow


def test_path_endpoints_and_target():
    y0, y1 = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(flow.interpolate(y0, y1, torch.zeros(3)), y0)
    torch.testing.assert_close(flow.interpolate(y0, y1, torch.ones(3)), y1)
    t = torch.tensor([0.2, 0.5, 0.7])
    h = 1e-3
    fd = (flow.interpolate(y0, y1, t + h) - flow.interpolate(y0, y1, t - h)) / (2 * h)
    torch.testing.assert_close(fd, flow.target_velocity(y0, y1), atol=1e-3, rtol=1e-3)


def _gaussian_field(mu: float, var: float):
    """Exact marginal velocity for data N(mu, var): E[y1|y_t] is linear in y_t."""
    def u(y, t):
        m_t, v_t = t * mu, t**2 * var + (1 - t) ** 2
        yhat = mu + t * var / v_t * (y - m_t)
        score = -(y - m_t) / v_t
        return (yhat - y) / (1 - t), yhat, score
    return u


def test_conversions_match_gaussian_truth():
    field = _gaussian_field(mu=0.7, var=2.0)
    y, t = torch.randn(10, dtype=torch.float64), 0.37
    u, yhat, score = field(y, t)
    torch.testing.assert_close(flow.denoised(y, u, t), yhat)
    torch.testing.assert_close(flow.score_from_velocity(y, u, t), score)
    torch.testing.assert_close(flow.velocity_from_score(y, score, t), u)


def test_gaussian_constants_for_unit_data():
    # For y1 ~ N(0, 1): y_t ~ N(0, t² + (1-t)²), Var[y1 | y_t] = r_t², d yhat / d y_t = c_t.
    for t in (0.05, 0.5, 0.93):
        v_t = t**2 + (1 - t) ** 2
        assert math.isclose(flow.posterior_var(t), 1 - t**2 / v_t, rel_tol=1e-12)
        assert math.isclose(flow.jacobian_scale(t), t / v_t, rel_tol=1e-12)
        y = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
        u, yhat, _ = _gaussian_field(0.0, 1.0)(y, t)
        (jac,) = torch.autograd.grad(flow.denoised(y, u, t).sum(), y)
        assert math.isclose(jac.item(), flow.jacobian_scale(t), rel_tol=1e-9)


def test_logit_normal_times():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_logit_normal(20000, 0.0, 1.0, g)
    assert (t > 0).all() and (t < 1).all()
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1) < 0.03
    t2 = flow.sample_logit_normal(20000, 1.0, 0.5, torch.Generator().manual_seed(0))
    assert abs(torch.log(t2 / (1 - t2)).mean().item() - 1.0) < 0.03


def test_loss_is_zero_for_the_true_velocity_and_ignores_padding():
    y0, y1 = torch.randn(2, 5), torch.randn(2, 5)
    t = torch.tensor([0.3, 0.6])
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])

    def oracle(x, yt, tt, m):  # knows the pair, so it returns the conditional velocity exactly
        out = y1 - y0
        return torch.where(mask, out, torch.full_like(out, 1e6))  # huge error at padded points

    assert flow.flow_matching_loss(oracle, torch.zeros(2, 5, 1), y1, mask, t, y0).item() == 0.0

    def zero(x, yt, tt, m):
        return torch.zeros_like(yt)

    loss = flow.flow_matching_loss(zero, torch.zeros(2, 5, 1), y1, mask, t, y0)
    expected = ((y1 - y0)[mask] ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_loss_with_context_sees_clean_context_and_scores_only_the_rest():
    y0, y1 = torch.randn(2, 5), torch.randn(2, 5)
    t = torch.tensor([0.3, 0.6])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    context = torch.tensor([[True, False, True, False, False], [False, True, False, False, False]])
    seen = {}

    def net(x, y_in, tt, m, c):  # exact away from the context, huge error at context points
        seen["y"], seen["context"] = y_in, c
        return torch.where(c | ~m, torch.full_like(y_in, 1e6), y1 - y0)

    assert flow.flow_matching_loss(net, torch.zeros(2, 5, 1), y1, mask, t, y0, context).item() == 0.0
    assert torch.equal(seen["context"], context)
    torch.testing.assert_close(seen["y"][context], y1[context])  # context points are clean data
    yt = flow.interpolate(y0, y1, t)
    torch.testing.assert_close(seen["y"][~context], yt[~context])
