"""Every catalogued vision module: NCHW in, NCHW out, gradients reach the input and the parameters."""
import pytest
import torch

from attnkit.nn import vision as V

from .examples import EXAMPLES

NAMES = [m.name for m in V.modules()]


def test_every_catalogued_module_has_an_example():
    assert sorted(EXAMPLES) == sorted(NAMES)


def test_catalogue_lists_name_paper_and_existing_file():
    import attnkit

    root = attnkit.__file__.rsplit("attnkit", 1)[0]
    for m in V.modules():
        d = m.describe()
        assert d["paper"] and d["name"] == m.cls.__name__
        with open(root + d["file"]) as f:
            assert f"class {m.name}(" in f.read()


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_gradient_flow(name):
    torch.manual_seed(0)
    make, shape = EXAMPLES[name]
    module = make()
    x = torch.randn(*shape, requires_grad=True)
    out = module(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_are_refused_with_the_argument_named(name):
    make, shape = EXAMPLES[name]
    module = make()
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        module([[1.0]])
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        module(torch.randn(shape[1], shape[2], shape[3]))
    with pytest.raises(ValueError, match="channels"):
        module(torch.randn(shape[0], shape[1] + 1, shape[2], shape[3]))
    with pytest.raises(TypeError, match="floating-point"):
        module(torch.ones(shape, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_float64_runs(name):
    make, shape = EXAMPLES[name]
    module = make().double()
    assert module(torch.randn(*shape, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: V.SqueezeExcitation(8, reduction=16), "reduction"),
        (lambda: V.ECA(16, kernel_size=4), "kernel_size must be odd"),
        (lambda: V.ULSAM(10, groups=4), "channels .* divisible by groups"),
        (lambda: V.SwinBlock(16, heads=2, window=4, shift=4), "shift must be smaller"),
        (lambda: V.SwinBlock(16, heads=3), "dim .* divisible by heads"),
        (lambda: V.LargeKernelAttention(8, kernel_size=20, dilation=5), "must be odd"),
        (lambda: V.PolarizedSelfAttention(8, layout="diagonal"), "layout"),
        (lambda: V.SplitAttention(10, 16, radix=4), "in_channels .* divisible"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_argument_types_are_type_errors():
    with pytest.raises(TypeError, match="channels must be an int"):
        V.CBAM(8.0)
    with pytest.raises(TypeError, match="heads must be an int"):
        V.HaloAttention(8, heads=True)


@pytest.mark.parametrize(
    "make, shape, match",
    [
        (lambda: V.SwinBlock(8, heads=2, window=4), (1, 8, 6, 8), "multiples of window=4"),
        (lambda: V.HaloAttention(8, heads=2, block=4), (1, 8, 8, 6), "multiples of block=4"),
        (lambda: V.SuperTokenAttention(8, stoken=3), (1, 8, 6, 8), "multiples of stoken=3"),
        (lambda: V.GlobalSubsampledAttention(8, heads=2, sr_ratio=3), (1, 8, 6, 8), "multiples of sr_ratio=3"),
    ],
)
def test_maps_that_do_not_tile_are_refused(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make()(torch.randn(*shape))


ANY_SIZE = [
    "SqueezeExcitation", "CBAM", "ECA", "TripletAttention", "ULSAM", "EfficientLocalAttention",
    "CoordinateAttention", "PolarizedSelfAttention", "SplitAttention", "ResidualAttention", "LargeKernelAttention",
]


@pytest.mark.parametrize("name", ANY_SIZE)
@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (3, 2)])
def test_cnn_modules_take_awkward_map_sizes(name, hw):
    make, shape = EXAMPLES[name]
    x = torch.randn(2, shape[1], *hw, requires_grad=True)
    out = make()(x)
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_non_local_without_sub_sampling_takes_a_single_pixel():
    x = torch.randn(2, 8, 1, 1)
    torch.testing.assert_close(V.NonLocalBlock(8)(x), x)  # identity at initialisation, any size
