"""Parameter declarations: each mechanism parameter's type, range and meaning, stated once.

A mechanism declares its scalar parameters as :class:`Param` values in
``MechanismSpec.params``. That one declaration is what :func:`attnkit.attention`
checks a value against before any work is done, what ``attnkit info NAME``
prints, and what the generated conformance test tries bad values of.

    Param(64, int, "keys each query sees to its left", low=1)
    Param(1e-6, float, "added to the normaliser", low=0, low_open=True)
    Param("softmax", str, "attention function", choices=("softmax", "laplace"))
    Param(None, int, "landmark count; None: one per 8 keys", low=1, optional=True)
    Param((64, 128), tuple, "per-head windows", item=int, low=0)

Rules: ints refuse bools and floats; floats take ints but refuse bools, NaN and
infinities; a ``tuple`` parameter takes a non-empty tuple or list whose items
obey ``item``, ``low`` and ``high`` (``scalar_ok`` also takes one bare item);
``None`` is accepted only where ``optional`` says so.

Tensors a mechanism takes are :class:`TensorInput` declarations in ``MechanismSpec.inputs``
(shape, meaning, required or not), never Params: their declared shapes are checked on calls with
nothing to compute too (an empty batch, no heads, no queries or no keys), where no form runs.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

_TYPE_WORDS = {int: "an int", float: "a float", bool: "a bool", str: "a string", tuple: "a tuple"}


@dataclass(frozen=True)
class Param:
    """One parameter: default, type, allowed range or choices, and what it means."""

    default: Any
    type: type
    doc: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    optional: bool = False
    item: type | None = None
    scalar_ok: bool = False

    def __post_init__(self):
        if self.type is torch.Tensor:
            raise TypeError("a tensor is declared as a TensorInput(shape, doc, required=...) in a spec's inputs, "
                            "not as a Param")
        if self.type not in _TYPE_WORDS:
            raise ValueError(f"Param type must be one of {[t.__name__ for t in _TYPE_WORDS]}, got {self.type!r}")
        if self.type is tuple and self.item not in (int, float):
            raise ValueError("a tuple Param needs item=int or item=float")

    def check(self, name: str, value) -> None:
        """Raise a ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is allowed."""
        if value is None:
            if self.optional:
                return
            raise TypeError(f"{name} must be {self.describe()}, got None")
        if self.type is tuple:
            if isinstance(value, (tuple, list)):
                if len(value) == 0:
                    raise ValueError(f"{name} must be {self.describe()}, got an empty {type(value).__name__}")
                for i, x in enumerate(value):
                    self._check_scalar(f"{name}[{i}]", x, self.item, name)
                return
            if self.scalar_ok:
                self._check_scalar(name, value, self.item, name)
                return
            raise TypeError(f"{name} must be {self.describe()}, got {type(value).__name__}")
        self._check_scalar(name, value, self.type, name)

    def _check_scalar(self, where: str, value, kind: type, name: str) -> None:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError(f"{where} must be {self.describe()}, got {type(value).__name__}")
            return
        if kind is str:
            if not isinstance(value, str):
                raise TypeError(f"{where} must be {self.describe()}, got {type(value).__name__}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{where} must be {self.describe()}, got {type(value).__name__} {value!r}")
        else:  # float
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{where} must be {self.describe()}, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{where} must be {self.describe()}, got {value}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise ValueError(f"{where} must be {self.describe()}, got {value!r}")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise ValueError(f"{where} must be {self.describe()}, got {value!r}")

    def range_text(self) -> str:
        """The allowed range in words, e.g. ``>= 1``, ``> 0``, ``in [0, 1]``."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = None if self.low is None else f"{'>' if self.low_open else '>='} {_num(self.low)}"
        hi = None if self.high is None else f"{'<' if self.high_open else '<='} {_num(self.high)}"
        if lo and hi:
            return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        return lo or hi or ""

    def describe(self) -> str:
        """What a value must be, e.g. ``an int >= 1``, ``a tuple of floats in [0, 1]``, ``None or a float > 0``."""
        if self.type is tuple:
            words = f"a tuple of {self.item.__name__}s"
            if self.scalar_ok:
                words = f"{_TYPE_WORDS[self.item]} or {words}"
        else:
            words = _TYPE_WORDS[self.type]
        rng = self.range_text()
        text = rng if self.choices else f"{words} {rng}" if rng else words
        return f"None or {text}" if self.optional else text

    def bad_values(self) -> list:
        """Values this declaration refuses (wrong type or out of range): the conformance suite tries each."""
        kind = self.item if self.type is tuple else self.type
        items: list = []
        if kind is int:
            items += [1.5, True, "1"]
        elif kind is float:
            items += [float("nan"), float("inf"), True, "1.0"]
        elif kind is bool:
            items += [1, "true"]
        elif kind is str:
            items += [1, "no-such-choice"] if self.choices else [1]
        else:
            items += [1.0, [1.0]]
        if kind in (int, float):
            step = 1 if kind is int else 0.5
            if self.low is not None:
                items.append(self.low if self.low_open else self.low - step)
            if self.high is not None:
                items.append(self.high if self.high_open else self.high + step)
        bad: list = [object()] + ([] if self.optional else [None])
        if self.type is not tuple:
            return bad + items
        bad += [(), *[(x,) for x in items]]
        if self.scalar_ok:
            bad += items
        else:
            bad.append(self.default[0] if isinstance(self.default, tuple) else 1)
        return bad


def _num(x) -> str:
    return repr(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class TensorInput:
    """An extra tensor a mechanism takes (a gate, a learned table, document ids): its shape and meaning.

    ``shape`` is written in the names of the docs, e.g. ``"(B, H, N, Dk)"``; ``required``
    inputs missing from a call are refused before any work, with this description.
    """

    shape: str
    doc: str
    required: bool = True

    def describe(self) -> str:
        return f"{self.shape} {self.doc}"

    def check(self, name: str, tensor, sizes: dict[str, int]) -> None:
        """Refuse ``tensor`` unless it has the declared rank, the declared sizes among ``sizes`` (B, H, Hkv, Nq,
        Nk, D, Dk, Dv; ``N`` is Nq or Nk, ``X or 1`` either, ``>= X`` at least X) and, when declared, the ``bool`` dtype. Other names
        (``buckets``, ``2K + 1``) are free. The forms check the rest (values, free sizes) when they run."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of shape {self.shape} ({self.doc}), got {type(tensor).__name__}")
        dims, boolean = _parse_shape(self.shape)
        wrong = len(dims) != tensor.ndim or (boolean and tensor.dtype != torch.bool)
        for choices, size in zip(dims, tensor.shape):
            if isinstance(choices, str):  # ">= X"
                wrong = wrong or (choices in sizes and size < sizes[choices])
                continue
            allowed = {sizes.get(c, c) for c in choices}
            if not wrong and all(isinstance(a, int) for a in allowed) and size not in allowed:
                wrong = True
        if wrong:
            known = ", ".join(f"{k}={v}" for k, v in sizes.items() if k != "N")
            raise ValueError(f"{name} must have shape {self.shape} ({known}), got {tuple(tensor.shape)} {tensor.dtype}")


def _parse_shape(shape: str) -> tuple[list, bool]:
    """``"(B or 1, H, N, >= Nk) bool"`` -> ``([("B", 1), ("H",), ("Nq", "Nk"), "Nk"], True)``: each dim's
    alternatives (names or ints; an expression such as ``2K + 1`` is kept as a name that no size defines), or
    the name after ``>=`` (a lower bound)."""
    text = shape.strip()
    boolean = text.endswith("bool")
    text = text.removesuffix("bool").strip().strip("()")
    dims = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.startswith(">="):
            dims.append(part[2:].strip())
            continue
        choices = []
        for alt in (a.strip() for a in part.split(" or ")):
            choices.extend(("Nq", "Nk") if alt == "N" else (int(alt),) if alt.isdigit() else (alt,))
        dims.append(tuple(choices))
    return dims, boolean
