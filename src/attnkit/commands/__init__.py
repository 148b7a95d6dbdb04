"""The sub-commands of ``attnkit``: one module each, listed in :data:`COMMANDS`.

A command module defines ``NAME``, ``HELP`` (one line for ``attnkit --help``),
a docstring (its ``--help`` text), ``add_arguments(parser)`` and
``run(args) -> int``. Errors are raised (``ValueError`` with a one-line
message); :func:`attnkit.cli.main` prints them as one line.
"""
from . import bench, explain, info, kernels, list as list_, masks, report, train

COMMANDS = (list_, info, bench, report, masks, explain, train, kernels)
