"""Optional C++ kernels for the CPU, compiled once on the user's machine and used when they are there.

Some steps are made of many small reads that torch's CPU operators can only do
one operator at a time (Quest's decode step: bound every page, pick the best,
read the picked pages' keys, then their values). A kernel that does the whole
step in one pass per head, prefetching the next page while it scores one, is
shorter than the sum of those operators. Such kernels live beside this module as
``.cpp`` files and are built with PyTorch's own extension builder
(``torch.utils.cpp_extension``, which needs a C++ compiler and ``ninja``):

- ``attnkit kernels --build`` (or :func:`build`) compiles them into
  :func:`kernel_directory` (about 30 s, once per machine, torch version and
  source); ``scripts/setup`` does this when a compiler is found;
- at run time a built kernel is loaded from there and used; one that is not
  built is never compiled behind the user's back: the torch form runs instead,
  computing the same numbers (each kernel is tested against it);
- ``ATTNKIT_COMPILED_KERNELS=0`` turns them off (the torch forms run), and so does
  ``with switched_off():`` inside a block (a benchmark measures both forms this way).

A build is named by a hash of its source, the flags, the torch and Python versions,
so a stale build is never loaded. The instruction set is what torch itself uses on
this CPU (``torch.backends.cpu.get_cpu_capability()``), never ``-march=native``, so a
build shared between machines runs on each one torch runs on the same way.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

KERNELS = {"quest_decode": "quest_decode.cpp"}  # name -> source beside this module
SWITCH = "ATTNKIT_COMPILED_KERNELS"

_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


class KernelBuildError(RuntimeError):
    """A compiled kernel could not be built: what is missing, or the compiler's message."""


def kernel_directory() -> Path:
    """Where built kernels are kept: ``$ATTNKIT_KERNEL_DIR``, else ``$XDG_CACHE_HOME/attnkit/kernels`` (default
    ``~/.cache/attnkit/kernels``)."""
    if os.environ.get("ATTNKIT_KERNEL_DIR"):
        return Path(os.environ["ATTNKIT_KERNEL_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "attnkit" / "kernels"


def compile_flags() -> list[str]:
    """``-O3``, OpenMP (torch's own thread pool runs the loops: the extension links the ``libgomp`` torch has
    loaded) and the vector instructions torch uses on this CPU."""
    return ["-O3", "-fopenmp", *_ISA_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])]


def build_name(kernel: str) -> str:
    """``attnkit_<kernel>_<hash>``: the hash of the source, the flags and the torch and Python versions."""
    source = (Path(__file__).parent / KERNELS[kernel]).read_bytes()
    key = b"\0".join([source, " ".join(compile_flags()).encode(), torch.__version__.encode(),
                      f"{sys.version_info.major}.{sys.version_info.minor}".encode()])
    return f"attnkit_{kernel}_{hashlib.sha256(key).hexdigest()[:12]}"


def missing_tools() -> list[str]:
    """What building needs and this machine lacks: a C++ compiler (``$CXX`` or ``c++``) and ``ninja`` (the PyPI
    package of that name provides it)."""
    missing = []
    if not shutil.which(os.environ.get("CXX", "c++")):
        missing.append(f"a C++ compiler ({os.environ.get('CXX', 'c++')} is not on PATH)")
    if not _ninja_directory():
        missing.append("ninja (pip install ninja)")
    return missing


def build(kernel: str = "quest_decode", *, verbose: bool = False):
    """Compile ``kernel`` (a no-op when its build exists) and return its module; :class:`KernelBuildError` names
    what is missing or quotes the compiler."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    missing = missing_tools()
    if missing:
        raise KernelBuildError(f"cannot build the compiled kernel {kernel!r}: missing {' and '.join(missing)}")
    from torch.utils.cpp_extension import load

    name = build_name(kernel)
    directory = kernel_directory() / name
    directory.mkdir(parents=True, exist_ok=True)
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([_ninja_directory(), path])  # torch's builder runs `ninja` from PATH
    try:
        module = load(name, [str(Path(__file__).parent / KERNELS[kernel])], extra_cflags=compile_flags(),
                      extra_ldflags=["-fopenmp"], build_directory=str(directory), verbose=verbose)
    except (RuntimeError, OSError) as error:
        raise KernelBuildError(f"building the compiled kernel {kernel!r} failed: {error}") from error
    finally:
        os.environ["PATH"] = path
    forget_builds()
    return module


def built_path(kernel: str) -> Path:
    """The shared library a build of ``kernel`` writes (it may not exist)."""
    name = build_name(kernel)
    return kernel_directory() / name / f"{name}.so"


_OFF = []  # one entry per open switched_off() block


@contextlib.contextmanager
def switched_off():
    """No compiled kernel is used inside this block, in any thread of the process: the torch forms run."""
    _OFF.append(True)
    try:
        yield
    finally:
        _OFF.pop()


def loaded(kernel: str):
    """``kernel``'s module if it is built and not switched off (``ATTNKIT_COMPILED_KERNELS=0``,
    :func:`switched_off`), else ``None``. Never compiles; a build still being written (its lock file is there)
    counts as not built."""
    if _OFF or os.environ.get(SWITCH, "1") == "0":
        return None
    return _imported(kernel)


@functools.lru_cache(maxsize=None)
def _imported(kernel: str):
    """The built module, or None; a build that does not load (damaged, or built against another library) is
    reported once as a warning and left unused."""
    path = built_path(kernel)
    if not path.exists() or (path.parent / "lock").exists():
        return None
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as error:
        warnings.warn(f"the compiled kernel {kernel!r} at {path} does not load ({error}); the torch form runs "
                      f"instead. Rebuild it: delete {path.parent} and run attnkit kernels --build", RuntimeWarning,
                      stacklevel=3)
        return None
    return module


def forget_builds() -> None:
    """Look for builds again at the next :func:`loaded` (after ``ATTNKIT_KERNEL_DIR`` changed)."""
    _imported.cache_clear()


def status() -> list[dict]:
    """Each kernel: its name, whether it is built and used, and where its build is (or would be)."""
    rows = []
    for kernel in KERNELS:
        path = built_path(kernel)
        rows.append({"kernel": kernel, "built": path.exists(), "used": loaded(kernel) is not None, "path": str(path)})
    return rows


def describe_state(row: dict) -> str:
    """A :func:`status` row in words: built and used, built but switched off, or not built."""
    if not row["built"]:
        return "not built, torch form runs"
    return "built, used" if row["used"] else f"built, off ({SWITCH}=0 or switched_off()): torch form runs"


def _ninja_directory() -> str | None:
    """The directory of a ``ninja`` executable: the PyPI package's, else one on PATH."""
    try:
        import ninja

        return ninja.BIN_DIR
    except ImportError:
        found = shutil.which("ninja")
        return os.path.dirname(found) if found else None
