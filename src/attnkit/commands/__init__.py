"""Sub-commands of ``attnkit`` beyond list/info/bench. Each module here defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; the CLI
discovers them, so a new command needs no edit to ``cli.py``."""
