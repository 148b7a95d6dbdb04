"""``device=`` and ``dtype=`` factory keyword arguments for every layer, as torch's own layers take them.

:func:`factory_kwargs` decorates a layer class: its ``__init__`` gains the
keyword-only arguments ``device`` and ``dtype``. The layer is built under
``torch.device(device)``, so its parameters and buffers are created on that
device (no copy from the CPU; ``device="meta"`` builds a layer without
memory), then its floating-point parameters and buffers are cast to ``dtype``.
Both are checked before anything is built.
"""
from __future__ import annotations

import functools
import inspect

import torch


def check_factory_kwargs(device, dtype) -> None:
    """A clear error for a ``device`` torch cannot parse or a ``dtype`` that is not a floating torch.dtype."""
    if device is not None and not isinstance(device, torch.device):
        if not isinstance(device, (str, int)) or isinstance(device, bool):
            raise TypeError(f"device must be a torch.device, a string such as 'cuda:0' or an int, got {device!r}")
        try:
            torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device: {error}") from error
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype such as torch.float64, got {dtype!r}")


def factory_kwargs(cls):
    """Class decorator: ``cls(..., device=None, dtype=None)`` builds the layer on ``device`` in ``dtype``."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, device=None, dtype=None, **kwargs):
        check_factory_kwargs(device, dtype)
        if device is None:
            init(self, *args, **kwargs)
        else:
            with torch.device(device):
                init(self, *args, **kwargs)
        if dtype is not None:
            self.to(dtype=dtype)

    signature = inspect.signature(init)
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in ("device", "dtype")]
    __init__.__signature__ = signature.replace(parameters=params[:at] + extra + params[at:])
    cls.__init__ = __init__
    return cls
