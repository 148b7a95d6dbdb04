"""``attnkit.describe(name)``: one mechanism explained for a user (what ``attnkit info NAME`` prints).

Everything comes from the registry entry: papers, patterns, forms (and the one
that runs by default), each parameter's default, allowed values and meaning
(:class:`attnkit.params.Param`), each tensor input's shape and meaning
(:class:`attnkit.params.TensorInput`), the state a decoder holds, and a
snippet that runs as printed.
"""
from __future__ import annotations

from . import registry

_STATE_SIZES = (1024, 65536)
_EXAMPLE = dict(batch=1, heads=8, kv_heads=8, head_dim=64)


def describe(name: str) -> str:
    """A multi-line description of mechanism ``name`` (a ValueError naming close matches if unknown)."""
    spec = registry.get(name)
    lines = [f"{spec.name}: {spec.summary}" if spec.summary else spec.name,
             f"  family {spec.family}, {spec.complexity}"]
    lines += ["papers:", *(f"  - {p}" for p in spec.papers)]
    lines.append("patterns: " + ", ".join(p for p in registry.PATTERNS if p in spec.patterns))
    lines += ["forms (form=...):", *_forms(spec)]
    lines += ["parameters:", *(_params(spec) or ["  (none)"])]
    tensors = _tensor_inputs(spec)
    if tensors:
        lines += ["tensor inputs (keyword tensors):", *tensors]
    lines += ["state after N tokens (state= / return_state=):", *_state(spec)]
    lines += ["attention weights (return_weights=True, attnkit.capture):", f"  {spec.weights_description()}"]
    lines += ["example:", *("  " + line for line in snippet(name).splitlines())]
    return "\n".join(lines)


def _forms(spec) -> list[str]:
    order = spec.default_order  # declared: a call without form= runs the first of these that can run it

    def tag(form):
        if form not in order:
            return ""
        before = order[:order.index(form)]
        if before:
            return f"  (default when {', '.join(before)} cannot run)"
        checked = form in spec.can_run or form in spec.auto_when
        return "  (default when it can run: attnkit.explain says why not)" if checked else "  (default)"

    out = [f"  {form}{tag(form)}" for form in spec.fast]
    out.append(f"  reference  (the paper's equations, materialised; float64 oracle){tag('reference')}")
    if spec.step is not None:
        out.append("  incremental  (runs when state= or return_state=True is given; needs causal=True)")
        kernel = getattr(spec.step, "compiled_kernel", None)
        if kernel is not None:
            from .kernels.compiled import describe_state, status

            (row,) = [r for r in status() if r["kernel"] == kernel]
            out.append(f"    decode steps on the CPU without gradients: compiled kernel {kernel!r} "
                       f"({describe_state(row)}; attnkit kernels)")
    return out


def _params(spec) -> list[str]:
    width = max((len(n) for n in spec.params), default=0)
    return [f"  {n:<{width}} = {p.default!r:<10} {p.describe()}" + (f": {p.doc}" if p.doc else "")
            for n, p in spec.params.items()]


def _tensor_inputs(spec) -> list[str]:
    out = []
    for n in spec.tensor_names:
        if n in spec.inputs:
            t = spec.inputs[n]
            out.append(f"  {n}: {t.shape} {'required' if t.required else 'optional'}: {t.doc}")
        elif n in spec.params:
            out.append(f"  {n}: {spec.params[n].doc}")
    return out


def _state(spec) -> list[str]:
    if spec.selection_reads_whole_prompt:
        return ["  no incremental form: which keys a query reads is chosen from the whole prompt's queries and keys"]
    if spec.step is None:
        return ["  no incremental form"]
    where = ", ".join(f"{k}={v}" for k, v in _EXAMPLE.items())
    what = "a KV cache: batch * kv_heads * N * (head_dim + v_dim) numbers" if spec.state_size is registry.kv_cache_size \
        else "numbers held, from spec.state_size(batch, heads, kv_heads, N, head_dim, v_dim, **params)"
    out = [f"  {what}"]
    try:
        sizes = [spec.state_size(_EXAMPLE["batch"], _EXAMPLE["heads"], _EXAMPLE["kv_heads"], n, _EXAMPLE["head_dim"],
                                 **spec.defaults) for n in _STATE_SIZES]
    except (TypeError, ValueError) as exc:  # a size that depends on tensor inputs
        return out + [f"  (depends on the call's inputs: {exc})"]
    return out + [f"  {where}: " + ", ".join(f"N={n}: {s:,}" for n, s in zip(_STATE_SIZES, sizes))]


def snippet(name: str) -> str:
    """Python that runs the mechanism on random inputs, as printed by :func:`describe`."""
    spec = registry.get(name)
    pattern = next(p for p in registry.PATTERNS if p in spec.patterns)
    d = 32
    kv_len = 16 if pattern.endswith("self") else 24
    lines = ["import torch, attnkit",
             f"q = torch.randn(1, 4, 16, {d}); k = torch.randn(1, 4, {kv_len}, {d}); v = torch.randn(1, 4, {kv_len}, {d})"]
    call = f'attnkit.attention(q, k, v, "{name}", causal={pattern.startswith("causal")}'
    if spec.tensor_inputs is not None:
        lines.append(f'inputs = attnkit.spec("{name}").tensor_inputs(q, k, v, torch.Generator().manual_seed(0))'
                     "  # example tensors")
        call += ", **inputs"
    lines.append(f"out = {call})")
    return "\n".join(lines)
