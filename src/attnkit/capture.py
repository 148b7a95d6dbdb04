"""Record the attention weights of every :func:`attnkit.attention` call a model makes.

::

    with attnkit.capture(model) as rec:
        model(x)
    rec[0].weights            # (B, H, Nq, Nk) of the first attention call
    rec[0].module             # the qualified name of the module that made it, e.g. "blocks.0.mixer"
    rec.stack()               # (calls, B, H, Nq, Nk) when every call has the same shape

Every call goes through :func:`attnkit.attention` (``attnkit.nn`` layers, attnkit's models
and the Hugging Face integration all do), so the recorder sees all of them. A call records
the mechanism's weights (``spec.weights``: exact for the softmax family and the patterns,
the implicit matrix of the parallel form for recurrent mechanisms); a mechanism without
them, or an incremental call, records ``weights=None`` and says why in ``note``.

``edit=fn`` changes the weights the calls use: ``fn(module, weights) -> weights`` receives
the name of the module making the call and the ``(B, H, Nq, Nk)`` weights, and the call's
output is computed from what it returns (attention calibration, head ablation); the record
holds the edited weights.

``grad=True`` makes the recorded weights part of the graph: the call's output is then
computed from them (``weights @ v``, or the spec's ``weights_output``), so after a
backward pass ``record.weights.grad`` holds the gradient of the loss with respect to the
attention weights (what gradient-weighted explanations use). Without it the weights are
recorded detached and the output comes from the usual fast form.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_ACTIVE: contextvars.ContextVar[tuple] = contextvars.ContextVar("attnkit_capture", default=())


@dataclass
class AttentionRecord:
    """One attention call: its mechanism, weights ``(B, H, Nq, Nk)`` (None when there are none,
    ``note`` says why), the module that made it (``""`` outside a captured model), whether it
    was causal, and for cache policies the keys each query read (``kept``, boolean, same shape)."""

    mechanism: str
    weights: torch.Tensor | None
    module: str = ""
    causal: bool = False
    note: str = ""
    kept: torch.Tensor | None = None


class Recorder:
    """The records of one :func:`capture` block, in call order."""

    def __init__(self, grad: bool, edit=None):
        self.grad = grad
        self.edit = edit
        self.records: list[AttentionRecord] = []
        self._modules: list[str] = []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index) -> AttentionRecord:
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    def weights(self) -> list[torch.Tensor]:
        """The recorded weights, in call order; a ValueError names the first call that has none."""
        for i, r in enumerate(self.records):
            if r.weights is None:
                raise ValueError(f"attention call {i} ({r.mechanism}{', ' + r.module if r.module else ''}) "
                                 f"recorded no weights: {r.note}")
        return [r.weights for r in self.records]

    def stack(self) -> torch.Tensor:
        """``(calls, B, H, Nq, Nk)``: every call's weights, which must have one shape."""
        found = self.weights()
        if not found:
            raise ValueError("no attention call was recorded inside the capture block")
        shapes = {tuple(w.shape) for w in found}
        if len(shapes) > 1:
            raise ValueError(f"the recorded weights have different shapes {sorted(shapes)}; index the records instead")
        return torch.stack(found)

    @property
    def module(self) -> str:
        """The innermost running module of the captured model (``""`` outside one)."""
        return self._modules[-1] if self._modules else ""

    def add(self, record: AttentionRecord) -> None:
        record.module = self.module
        self.records.append(record)


@contextmanager
def capture(model: torch.nn.Module | None = None, *, grad: bool = False, edit=None):
    """Record every attention call inside the block (see the module docstring).

    ``model``: when given, each record names the innermost of its modules that was running.
    ``grad``: keep the weights in the graph, with their gradients after a backward pass.
    ``edit``: ``edit(module, weights) -> weights``, the weights the calls use instead.
    """
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if not isinstance(grad, bool):
        raise TypeError(f"grad must be a bool, got {type(grad).__name__}")
    if edit is not None and not callable(edit):
        raise TypeError(f"edit must be a callable edit(module, weights) -> weights, got {type(edit).__name__}")
    recorder = Recorder(grad, edit)
    handles = []
    if model is not None:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(_enter(recorder, name)))
            handles.append(module.register_forward_hook(_leave(recorder)))
    token = _ACTIVE.set(_ACTIVE.get() + (recorder,))
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)
        for handle in handles:
            handle.remove()


def _enter(recorder, name):
    def hook(module, args):
        recorder._modules.append(name)

    return hook


def _leave(recorder):
    def hook(module, args, output):
        if recorder._modules:
            recorder._modules.pop()

    return hook


def active() -> tuple:
    """The recorders of the enclosing :func:`capture` blocks (innermost last)."""
    return _ACTIVE.get()
