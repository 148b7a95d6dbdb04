"""The vision modules follow attnkit.nn's factory conventions: device= (meta builds without memory) and dtype=."""
import inspect
import io

import pytest
import torch

from attnkit.nn import vision as V

from .examples import EXAMPLES

# the exported modules outside the catalogue (they change the map's size)
MODULES = {
    **EXAMPLES,
    "PCPVTStage": (lambda **kw: V.PCPVTStage(3, 8, depth=1, heads=1, sr_ratio=2, mlp_ratio=2.0, patch=4, **kw),
                   (1, 3, 16, 16)),
    "TwinsPCPVT": (lambda **kw: V.TwinsPCPVT((8, 8, 8, 8), (1, 1, 1, 1), (2, 2, 2, 2), (1, 1, 1, 1), num_classes=3, **kw),
                   (1, 3, 64, 64)),
}


def test_every_exported_module_is_tested():
    exported = {n for n in V.__all__ if inspect.isclass(getattr(V, n)) and issubclass(getattr(V, n), torch.nn.Module)}
    assert exported == set(MODULES), f"add these modules to MODULES or examples.py: {sorted(exported - set(MODULES))}"


@pytest.mark.parametrize("name", MODULES)
def test_every_module_takes_device_and_dtype_and_pickles(name):
    make, shape = MODULES[name]
    params = inspect.signature(getattr(V, name)).parameters
    assert "device" in params and "dtype" in params, f"{name} has no device=/dtype= factory kwargs"
    on_meta = make(device="meta")
    tensors = [*on_meta.parameters(), *on_meta.buffers()]
    assert tensors and all(t.device.type == "meta" for t in tensors), f"{name}: a tensor was not made on the device"
    wide = make(dtype=torch.float64)
    floats = [t for t in (*wide.parameters(), *wide.buffers()) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float64 for t in floats), f"{name}: dtype= was not applied"
    x = torch.randn(*shape, dtype=torch.float64)
    assert wide.eval()(x).dtype == torch.float64
    with pytest.raises(TypeError, match="dtype"):
        make(dtype=torch.int64)
    with pytest.raises((ValueError, TypeError), match="device"):
        make(device="nosuchdevice")
    buf = io.BytesIO()
    torch.save(wide, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded.eval()(x), wide(x)), f"{name}: a save/load round trip changed the output"
