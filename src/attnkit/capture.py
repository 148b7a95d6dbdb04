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
them records ``weights=None`` and says why in ``note``.

Incremental calls (``state=``) record the weights of their new queries over every key the
call read: the whole cache (``KVCache``), the held sinks and window (``WindowKVCache``), the
keys an ``attnkit.cache`` policy kept (``KVState``), or the kept keys inside transformers'
``generate`` with ``attnkit.cache.Cache``; ``positions`` gives each column's sequence
position, and ``rec.sequence(module)`` puts a generation's steps together as one matrix.
A recurrent state summarises the keys before the call, so a recurrent mechanism's
incremental call records ``weights=None`` (capture a one-shot call instead).

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
    was causal, for cache policies the keys each query read (``kept``, boolean, same shape),
    and the sequence position of each weight column (``positions``, ``(B, H, Nk)`` int64; None
    when column ``j`` is position ``j``, as in a one-shot call or a cache that kept every key)."""

    mechanism: str
    weights: torch.Tensor | None
    module: str = ""
    causal: bool = False
    note: str = ""
    kept: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    def rows(self, length: int | None = None) -> torch.Tensor:
        """The weights with each column at its sequence position: ``(B, H, Nq, length)``, zeros at the
        positions this call did not read (evicted from a cache, outside a window, not yet seen).
        ``length`` defaults to one past the last position read."""
        if self.weights is None:
            raise ValueError(f"this {self.mechanism} call recorded no weights: {self.note}")
        B, H, Nq, Nk = self.weights.shape
        if self.positions is None:
            positions = torch.arange(Nk, device=self.weights.device).expand(B, H, Nk)
        else:
            positions = self.positions.to(torch.int64).expand(B, H, Nk)
        end = int(positions.max()) + 1 if Nk else 0
        length = end if length is None else length
        if length < end:
            raise ValueError(f"length must be at least {end} (one past the last position read), got {length}")
        out = self.weights.new_zeros(B, H, Nq, length)  # added, not assigned: a padding column (weight 0) may share a position
        return out.scatter_add(-1, positions[:, :, None, :].expand(B, H, Nq, Nk), self.weights)


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

    def sequence(self, module: str = "") -> torch.Tensor:
        """One module's calls across a generation (a prompt, then one call per new token) as one matrix
        ``(B, H, queries, positions)``: each call's :meth:`AttentionRecord.rows`, stacked in call order, so
        row ``t`` is what the query of step ``t`` read, at the positions it read (zeros where a cache had
        evicted a key). ``module`` is the recorded module name (``""`` outside a captured model)."""
        calls = [r for r in self.records if r.module == module]
        if not calls:
            names = sorted({r.module for r in self.records})
            raise ValueError(f"no attention call of module {module!r} was recorded; recorded modules: {names}")
        ends = [r.rows().shape[-1] for r in calls]
        return torch.cat([r.rows(max(ends)) for r in calls], dim=2)

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


def amend_last(*, rows: slice | None = None, positions: torch.Tensor | None = None) -> None:
    """Correct the last record of every active recorder, for a caller that knows more than the call it made:
    keep only the weight ``rows`` it asked about (an integration that padded the queries), or set the
    sequence ``positions`` of the keys (an integration whose cache kept some of them)."""
    for recorder in _ACTIVE.get():
        if not recorder.records:
            continue
        record = recorder.records[-1]
        if rows is not None:
            record.weights = None if record.weights is None else record.weights[:, :, rows]
            record.kept = None if record.kept is None else record.kept[:, :, rows]
        if positions is not None:
            record.positions = positions


def active() -> tuple:
    """The recorders of the enclosing :func:`capture` blocks (innermost last)."""
    return _ACTIVE.get()
