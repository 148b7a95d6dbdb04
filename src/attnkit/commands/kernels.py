"""``attnkit kernels``: the optional compiled CPU kernels, whether they are built, and building them.

    attnkit kernels            # each kernel: built or not, used or not, where its build lives
    attnkit kernels --build    # compile them (a C++ compiler and ninja; about 30 s, once)

A kernel that is built is used by the steps it serves (``attnkit info quest``
says which); one that is not leaves them on their torch form. Building needs
``c++`` (or ``$CXX``) and ``ninja`` (``pip install 'attnkit[compiled]'``);
``ATTNKIT_KERNEL_DIR`` moves the builds, ``ATTNKIT_COMPILED_KERNELS=0`` turns
the kernels off.
"""
from __future__ import annotations

NAME = "kernels"
HELP = "the optional compiled CPU kernels: whether they are built (--build compiles them)"


def add_arguments(parser) -> None:
    parser.add_argument("--build", action="store_true", help="compile the kernels that are not built yet")
    parser.add_argument("--verbose", action="store_true", help="with --build: show the compiler's output")


def run(args) -> int:
    import time

    from ..kernels import compiled

    if args.build:
        for kernel in compiled.KERNELS:
            if compiled.built_path(kernel).exists():
                continue  # a build is named by what it is built from: this one is current
            start = time.perf_counter()
            try:
                compiled.build(kernel, verbose=args.verbose)
            except compiled.KernelBuildError as error:
                raise OSError(str(error)) from error  # one line and exit code 2 (attnkit.cli)
            print(f"built {kernel} in {time.perf_counter() - start:.1f} s")
    rows = compiled.status()
    for row in rows:
        print(f"{row['kernel']}: {compiled.describe_state(row)}; {row['path']}")
    missing = compiled.missing_tools()
    if missing and not all(row["built"] for row in rows):
        print(f"to build: install {' and '.join(missing)}, then attnkit kernels --build")
    return 0
