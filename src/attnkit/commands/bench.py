"""``attnkit bench [SUITE] [options]``: run a benchmark suite and store its figures.

Without a suite, ``attnkit bench`` runs ``overview``: a quick cross-section of
the main suites, then the HTML report (with options: ``attnkit bench overview
--db PATH``). Every suite stores its rows in the
results database (``--db``), keeps them when interrupted (continue with
``--resume``) and shows them in ``attnkit report``. ``attnkit bench SUITE
--help`` describes one suite.
"""
from __future__ import annotations

import argparse

NAME = "bench"
HELP = "run a benchmark suite (attnkit bench --help lists them)"


class _SuiteListFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse measures subcommand names one indent shallower than it prints them, so a long suite
    name (``content-sparse``) would wrap its summary onto the next line; measure them where they are printed."""

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += self._indent_increment


def add_arguments(parser) -> None:
    from ..bench.options import Parser
    from ..bench.suites import all_suites, configure, summary

    parser.formatter_class = _SuiteListFormatter
    sub = parser.add_subparsers(dest="suite_name", metavar="SUITE", parser_class=Parser,
                                title="suites (default: overview)")
    for name, module in all_suites().items():
        suite = sub.add_parser(name, help=summary(module), description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        configure(suite, module)


def run(args) -> int:
    from ..bench import suites

    if args.suite_name is None:
        return suites.run("overview", [])
    return suites.start(args)
