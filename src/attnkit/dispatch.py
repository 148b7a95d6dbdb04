"""Which form runs a call, and why: one explicit rule for every mechanism.

A spec declares its forms (``reference`` and ``fast``), the forms a call without
``form=`` tries in order (``default_forms``), and per form a ``can_run`` check
``check(q, k, v, *, causal, mask, **params) -> None | str`` (None: the form can
run this call; a string: why it cannot). ``auto_when`` holds checks of the same
kind that only the automatic choice applies (when a form can run every call but
pays off only on some, e.g. a block-sparse kernel on a sparse mask).

- ``form="name"``: that form runs, or a ValueError says why it cannot (its
  ``can_run`` reason) and which forms can. A form's name says what runs: no form
  hands a call to another one.
- no ``form``: the first of ``default_forms`` whose checks pass runs.
- incremental calls (``state`` / ``return_state``) run the spec's ``step``.

:func:`attnkit.explain` returns the choice and its reason; :func:`attnkit.attention`
logs the same at DEBUG level on the ``attnkit`` logger.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("attnkit")


@dataclass(frozen=True)
class Choice:
    """The form a call runs and the reason, in words."""

    mechanism: str
    form: str
    reason: str

    def __str__(self) -> str:
        return f"{self.mechanism}: form {self.form!r} runs ({self.reason})"


def why_not(spec, form: str, q, k, v, *, causal: bool, mask, params: dict, automatic: bool = False) -> str | None:
    """None when ``form`` can run this call, else the reason it cannot (``automatic``: the auto checks too)."""
    checks = [spec.can_run.get(form)]
    if automatic:
        checks.append(spec.auto_when.get(form))
    for check in checks:
        if check is not None:
            reason = check(q, k, v, causal=causal, mask=mask, **params)
            if reason is not None:
                return reason
    return None


def choose_form(spec, q, k, v, *, causal: bool, mask, form: str | None, params: dict, incremental: bool = False) -> Choice:
    """The form that runs this call (arguments already checked by :func:`attnkit.attention`)."""
    if incremental:
        return Choice(spec.name, "incremental", "state / return_state: the mechanism's step form")
    if form is not None:
        spec.form(form)  # an unknown name: ValueError listing the forms
        reason = why_not(spec, form, q, k, v, causal=causal, mask=mask, params=params)
        if reason is not None:
            others = [f for f in ("reference", *spec.fast)
                      if f != form and why_not(spec, f, q, k, v, causal=causal, mask=mask, params=params) is None]
            raise ValueError(f"form={form!r} of mechanism {spec.name!r} cannot run this call: {reason}; "
                             f"forms that can: {others} (or leave form=None)")
        return Choice(spec.name, form, "asked for with form=")
    skipped = []
    for name in spec.default_order:
        reason = why_not(spec, name, q, k, v, causal=causal, mask=mask, params=params, automatic=True)
        if reason is None:
            because = f"the default; skipped {'; '.join(skipped)}" if skipped else "the default"
            return Choice(spec.name, name, because)
        skipped.append(f"{name} ({reason})")
    raise ValueError(f"no default form of mechanism {spec.name!r} can run this call: {'; '.join(skipped)}")


def run(spec, q, k, v, *, causal: bool, mask, scale: float, form: str | None, params: dict):
    """Choose the form, log the choice at DEBUG level, run it."""
    if log.isEnabledFor(logging.DEBUG) or form is not None:
        choice = choose_form(spec, q, k, v, causal=causal, mask=mask, form=form, params=params)
        log.debug("%s", choice)
        name = choice.form
    else:
        name = _default(spec, q, k, v, causal, mask, params)
    return spec.form(name)(q, k, v, causal=causal, mask=mask, scale=scale, **params)


def _default(spec, q, k, v, causal, mask, params) -> str:
    """:func:`choose_form`'s answer without ``form=``, without building the reason (the common call)."""
    for name in spec.default_order:
        if (name not in spec.can_run and name not in spec.auto_when) or \
                why_not(spec, name, q, k, v, causal=causal, mask=mask, params=params, automatic=True) is None:
            return name
    return choose_form(spec, q, k, v, causal=causal, mask=mask, form=None, params=params).form  # raises, with reasons
