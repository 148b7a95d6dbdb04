"""One recipe for every recurrent mechanism: a spec from its stateful forms.

A recurrent mechanism is written as *stateful forms* ``f(q, k, v, *, causal, scale,
initial_state=None, **params) -> (out, final_state)``: ``"parallel"`` (materialised,
straight from the equations: the reference), ``"chunked"``, ``"recurrent"`` (token by
token) and any others. :func:`register_stateful_mechanism` derives the rest: the
reference and fast forms drop the state, the default form is ``chunked``, the
incremental step feeds the state to the recurrent form (one token) or the chunked
one, and masks are refused (``supports_mask=False``).
"""
from __future__ import annotations

from ..registry import MechanismSpec, register

CAUSAL_ONLY = frozenset({"causal-self"})


def step_from(forms, many="chunked"):
    """Incremental form: the state goes in as ``initial_state`` (recurrent for one token, ``many`` otherwise)."""

    def step(q, k, v, state, *, causal, mask, scale, **params):
        form = forms["recurrent"] if q.shape[2] == 1 else forms[many]
        return form(q, k, v, causal=causal, scale=scale, initial_state=state, **params)

    step.one_query_per_key = True  # a recurrence reads token t's query with token t's key
    return step


def drop_state(name: str, form):
    """The one-shot form of a stateful form: same output, final state dropped (masks are refused upstream)."""

    def one_shot(q, k, v, *, causal, mask, scale, **kw):
        return form(q, k, v, causal=causal, scale=scale, **kw)[0]

    one_shot.__name__ = f"{name}_{form.__name__}"
    return one_shot


def register_stateful_mechanism(name: str, *, forms: dict, patterns=CAUSAL_ONLY, default_form: str = "chunked",
                                **spec_fields) -> MechanismSpec:
    """Register mechanism ``name`` from its stateful ``forms`` (``parallel``, ``chunked``, ``recurrent``, ...).

    ``default_form`` runs calls without ``form=`` and incremental calls of more than one token.

    ``spec_fields`` are the other :class:`~attnkit.registry.MechanismSpec` fields (family,
    papers, params, tensor inputs, FLOPs, state size, summary, ...).
    """
    return register(
        MechanismSpec(
            name=name,
            patterns=frozenset(patterns),
            reference=drop_state(name, forms["parallel"]),
            fast={form: drop_state(name, f) for form, f in forms.items() if form != "parallel"},
            default_forms=(default_form,),
            step=step_from(forms, default_form),
            supports_mask=False,
            stateful_forms=dict(forms),
            **spec_fields,
        )
    )
