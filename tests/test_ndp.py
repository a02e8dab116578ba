"""The DiT velocity network: equivariance, masks, zero-init, input dimension."""

import pytest
import torch

from llmflow.ndp import NDP, NDPConfig


# x in the token only, or also through rotary embedding in every attention.
VARIANTS = [{"rope": False}, {"rope": True}]


def _net(x_dim: int = 1, seed: int = 0, **variant) -> NDP:
    torch.manual_seed(seed)
    net = NDP(NDPConfig(x_dim=x_dim, dim=32, depth=2, heads=4, **variant))
    # Zero-initialised adaLN and output layer make the fresh net output 0 everywhere;
    # randomise them so the tests see a non-trivial function.
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.2)
    return net.eval()


def test_fresh_network_outputs_zero_velocity():
    torch.manual_seed(0)
    net = NDP(NDPConfig(dim=32, depth=2, heads=4))
    u = net(torch.randn(3, 7, 1), torch.randn(3, 7), torch.rand(3))
    assert torch.equal(u, torch.zeros(3, 7))


@pytest.mark.parametrize("variant", VARIANTS)
def test_permuting_points_permutes_output(variant):
    net = _net(**variant)
    x, y, t = torch.randn(2, 11, 1), torch.randn(2, 11), torch.rand(2)
    perm = torch.randperm(11)
    u = net(x, y, t)
    u_perm = net(x[:, perm], y[:, perm], t)
    torch.testing.assert_close(u_perm, u[:, perm], atol=1e-5, rtol=1e-5)
    assert u.abs().mean() > 1e-2  # not trivially equivariant


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_valid_outputs(variant):
    net = _net(**variant)
    x, y, t = torch.randn(1, 6, 1), torch.randn(1, 6), torch.rand(1)
    u = net(x, y, t)
    # The same task padded with garbage points, batched with a full-size task.
    x_pad = torch.cat([x, 50 * torch.randn(1, 4, 1)], dim=1)
    y_pad = torch.cat([y, 50 * torch.randn(1, 4)], dim=1)
    other = torch.randn(1, 10, 1), torch.randn(1, 10)
    xb = torch.cat([x_pad, other[0]]), torch.cat([y_pad, other[1]])
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    ub = net(xb[0], xb[1], torch.cat([t, torch.rand(1)]), mask)
    torch.testing.assert_close(ub[0, :6], u[0], atol=1e-5, rtol=1e-5)
    # Without the mask the garbage points would leak into the valid outputs.
    assert not torch.allclose(net(x_pad, y_pad, t)[0, :6], u[0], atol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_multidimensional_inputs_and_time_dependence(variant):
    net = _net(x_dim=2, **variant)
    x, y = torch.randn(4, 5, 2), torch.randn(4, 5)
    u0 = net(x, y, torch.full((4,), 0.1))
    u1 = net(x, y, torch.full((4,), 0.9))
    assert u0.shape == (4, 5) and torch.isfinite(u0).all()
    assert not torch.allclose(u0, u1)
    assert torch.equal(net(x, y, torch.tensor(0.1)), u0)  # scalar t broadcasts


def test_context_flags_change_the_output_and_stay_equivariant():
    net = _net()
    x, y, t = torch.randn(2, 9, 1), torch.randn(2, 9), torch.rand(2)
    context = torch.zeros(2, 9, dtype=torch.bool)
    context[:, :3] = True
    u = net(x, y, t, None, context)
    assert torch.equal(net(x, y, t), net(x, y, t, None, torch.zeros_like(context)))  # no flag = the joint
    assert not torch.allclose(u, net(x, y, t), atol=1e-3)
    perm = torch.randperm(9)
    torch.testing.assert_close(net(x[:, perm], y[:, perm], t, None, context[:, perm]), u[:, perm])


def test_a_network_without_context_tokens_refuses_a_context():
    net = NDP(NDPConfig(dim=16, depth=1, heads=2, context_tokens=False))
    assert net.embed[0].in_features == 2
    with pytest.raises(ValueError, match="no context tokens"):
        net(torch.randn(1, 4, 1), torch.randn(1, 4), torch.rand(1), None, torch.ones(1, 4, dtype=torch.bool))


def test_rotary_attention_sees_input_differences_only():
    """With rotary embedding the attention sees x only through x_i − x_j: shifting every input
    changes the output only through the token embedding, whose x weights are zeroed here."""
    net = _net(rope=True)
    with torch.no_grad():
        net.embed[0].weight[:, 0] = 0.0  # the raw x column
    x, y, t = torch.randn(2, 9, 1), torch.randn(2, 9), torch.rand(2)
    u = net(x, y, t)
    torch.testing.assert_close(net(x + 0.37, y, t), u, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(net(1.5 * x, y, t), u, atol=1e-3)  # the differences do matter


def test_rotary_embedding_keeps_norms_and_makes_products_relative():
    from llmflow.ndp import rotate

    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    angle = torch.randn(1, 1, 5, 4)
    qr = rotate(q, angle.cos(), angle.sin())
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    scores = qr @ rotate(k, angle.cos(), angle.sin()).transpose(-1, -2)
    shifted = angle + 0.8
    torch.testing.assert_close(rotate(q, shifted.cos(), shifted.sin()) @ rotate(k, shifted.cos(), shifted.sin()).transpose(-1, -2), scores)
    assert not torch.allclose(scores, q @ k.transpose(-1, -2), atol=1e-3)


def test_rotary_embedding_needs_a_pair_per_input_coordinate():
    with pytest.raises(ValueError, match="rope needs a head width"):
        NDPConfig(x_dim=5, dim=32, heads=4, rope=True)  # head width 8: four pairs for five coordinates
    net = _net(x_dim=3, rope=True)  # one pair per coordinate, one left unturned
    x, y, t = torch.randn(2, 6, 3), torch.randn(2, 6), torch.rand(2)
    with torch.no_grad():
        net.embed[0].weight[:, :3] = 0.0
    torch.testing.assert_close(net(x + torch.tensor([0.3, -1.0, 2.0]), y, t), net(x, y, t), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(net(x * torch.tensor([1.0, 1.0, 1.5]), y, t), net(x, y, t), atol=1e-3)
