"""Mega: the damped EMA's three forms agree; the layer is causal and decodes incrementally."""
from __future__ import annotations

import pytest
import torch

from attnkit.nn.mega import DampedEMA, MegaLayer


def test_ema_forms_agree():
    torch.manual_seed(0)
    ema = DampedEMA(6, ndim=3).double()
    x = torch.randn(2, 37, 6, dtype=torch.float64)
    ref = ema(x, form="reference")
    torch.testing.assert_close(ema(x, form="fft"), ref)
    torch.testing.assert_close(ema.ema_step(x, None)[0], ref)
    # pieces carried through the state equal one call
    a, h = ema.ema_step(x[:, :10], None)
    b, _ = ema.ema_step(x[:, 10:], h)
    torch.testing.assert_close(torch.cat([a, b], dim=1), ref)


def test_ema_is_the_damped_recurrence():
    ema = DampedEMA(1, ndim=1).double()
    x = torch.zeros(1, 5, 1, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    alpha, delta = torch.sigmoid(ema.alpha).item(), torch.sigmoid(ema.delta).item()
    expected = [ema.eta.item() * alpha * ema.beta.item() * (1 - alpha * delta) ** t for t in range(5)]
    torch.testing.assert_close(ema(x, form="reference")[0, :, 0], torch.tensor(expected, dtype=torch.float64))


def test_layer_is_causal_and_decodes_incrementally():
    torch.manual_seed(0)
    layer = MegaLayer(8, z_dim=16).double()
    x = torch.randn(2, 21, 8, dtype=torch.float64)
    whole = layer(x)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(2, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x2)[:, :12], whole[:, :12])
    state, outs = None, []
    for a, b in ((0, 5), (5, 6), (6, 21)):
        y, state = layer(x[:, a:b], state=state, return_state=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), whole)
    whole.sum().backward()
    assert layer.ema.alpha.grad is not None


def test_bad_ema_form_is_refused():
    with pytest.raises(ValueError, match="form"):
        DampedEMA(4)(torch.randn(1, 3, 4), form="scan")
