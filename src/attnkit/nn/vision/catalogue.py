"""The listing of vision modules: every public ``nn.Module`` class in this package
that names its paper (a ``paper`` class attribute). Found by walking the package,
so a new module file needs no registration line."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class VisionModule:
    name: str
    paper: str
    file: str
    cls: type

    def describe(self) -> dict:
        return {"name": self.name, "paper": self.paper, "file": self.file}


def modules() -> list[VisionModule]:
    """Every vision attention module: name, paper title, source file (relative to the package)."""
    package = importlib.import_module(__package__)
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name == "catalogue":
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, nn.Module) and "paper" in vars(cls):
                found.append(VisionModule(name, cls.paper, f"attnkit/nn/vision/{info.name}.py", cls))
    return sorted(found, key=lambda m: (m.file, m.name))
