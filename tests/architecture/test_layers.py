"""The package's layers, read from its imports (every import statement, lazy ones included).

A module may import from its own layer and the layers below it, never from one above
(docs/architecture.md draws the picture); no module imports itself back through others
(no import cycle); every package belongs to a layer. The expected layout of a new
mechanism (docs/architecture.md, "Adding a mechanism") is checked too: a mechanism's
files live under ``families/`` and a recurrent op's folder holds at most three files.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first. A package of attnkit (or a top-level module) and the layer it belongs to.
LAYERS = [
    ("core", {"registry", "validation", "state", "dispatch", "params"}),
    ("scores", {"scores"}),
    ("kernels", {"kernels", "masks", "reference", "positional", "cache"}),
    ("builders", {"builders"}),
    ("families", {"families"}),
    ("api", {"api", "capture", "flex", "mechanism_info"}),
    ("distributed", {"distributed"}),  # context parallelism: nn.Attention(context_parallel=...) runs it
    ("nn", {"nn"}),
    ("package", {"attnkit"}),  # attnkit/__init__.py: the names ``import attnkit`` gives
    ("models", {"models", "integrations"}),
    ("interpret", {"interpret"}),  # attributions, sinks, calibration on top of attnkit.capture
    ("training", {"training", "data"}),
    ("bench", {"bench"}),
    ("cli", {"commands", "cli", "__main__"}),
]
LAYER_OF = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}
NAME_OF = {rank: name for rank, (name, _) in enumerate(LAYERS)}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted((SRC / "attnkit").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


def _imports(name: str, path: Path, package: bool, modules) -> set[str]:
    """The attnkit modules that ``name`` imports (each name resolved to a module where it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                found.add(target)
    return found


MODULES = _modules()
GRAPH = {name: _imports(name, path, package, MODULES) for name, (path, package) in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "attnkit"


def test_every_package_has_a_layer():
    missing = sorted({_part(m) for m in MODULES} - set(LAYER_OF))
    assert not missing, (f"attnkit.{missing} belong to no layer: add them to LAYERS in {__file__} and to the "
                         "picture in docs/architecture.md")


def test_no_import_points_up():
    upward = []
    for module, targets in GRAPH.items():
        for target in targets:
            here, there = LAYER_OF.get(_part(module)), LAYER_OF.get(_part(target))
            if here is not None and there is not None and there > here:
                upward.append(f"{module} ({NAME_OF[here]}) imports {target} ({NAME_OF[there]})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycle():
    # A package's __init__ re-exporting its own modules is not a cycle unless a module imports the package back.
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import_and_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert LAYER_OF["kernels"] < LAYER_OF["builders"] < LAYER_OF["families"] < LAYER_OF["nn"] \
        < LAYER_OF["models"] == LAYER_OF["integrations"] < LAYER_OF["bench"] < LAYER_OF["cli"]
    assert "attnkit.families.performer" in GRAPH["attnkit.nn.inputs.linear"]


@pytest.mark.parametrize("op", sorted(p.name for p in (SRC / "attnkit" / "families").iterdir()
                                      if p.is_dir() and (p / "__init__.py").exists()))
def test_a_recurrent_op_is_one_folder_of_at_most_three_files(op):
    files = sorted(p.name for p in (SRC / "attnkit" / "families" / op).glob("*.py"))
    assert "__init__.py" in files and len(files) <= 3, f"families/{op}/ holds {files}"
