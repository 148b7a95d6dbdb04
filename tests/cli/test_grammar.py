"""One command-line grammar: every suite is listed, takes the common options and stores rows the report shows."""
import pytest

from attnkit.bench.suites import all_suites, build_parser
from attnkit.cli import build_parser as cli_parser, main
from tests.bench.stored import run_suite

COMMON = ("--db", "--resume", "--threads", "--no-progress", "--device")


def test_every_suite_is_listed_in_bench_help(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for name in all_suites():
        assert f"\n    {name} " in out or f"\n    {name}\n" in out  # a long name puts its help on the next line


@pytest.mark.parametrize("name", sorted(all_suites()))
def test_every_suite_takes_the_common_options(name):
    options = {o for action in build_parser(name)._actions for o in action.option_strings}
    assert set(COMMON) <= options
    args = build_parser(name).parse_args(["--db", "x.sqlite", "--resume", "--threads", "2", "--no-progress",
                                          "--device", "cpu"])
    assert (args.db, args.resume, args.threads, args.no_progress, args.device) == ("x.sqlite", True, 2, True, "cpu")


def test_version(capsys):
    from attnkit import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"attnkit {__version__}"


def test_info_takes_an_optional_name(capsys):
    assert cli_parser().parse_args(["info"]).name is None
    assert cli_parser().parse_args(["info", "softmax"]).name == "softmax"
    assert main(["info", "softmax"]) == 0
    assert "softmax" in capsys.readouterr().out


def test_info_explains_model_pieces(capsys):
    assert main(["info", "deconstructed"]) == 0
    out = capsys.readouterr().out
    assert "StaticEmbQK" in out and "Readings" in out


def test_lists_are_comma_separated_everywhere():
    """No option takes several words (``nargs``): every list is one comma-separated word."""
    parsers = [build_parser(name) for name in all_suites()]
    root = cli_parser()
    stack = [root]
    while stack:
        p = stack.pop()
        parsers.append(p)
        for action in p._actions:
            if action.choices and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
    for p in parsers:
        for action in p._actions:
            if action.option_strings:
                assert action.nargs in (None, 0, 2 if action.dest == "compare" else None), (p.prog, action.dest)


SMALL = {
    "core": ("--no-memory", "--n", "32", "--repeats", "1"),
    "gla": ("--n", "64", "--repeats", "1"),
    "forms": ("--n", "64", "--contexts", "16,32", "--repeats", "1"),
    "layers": ("--dim", "32", "--heads", "2", "--context", "16", "--steps", "2", "--moa-n", "16"),
    "heads": ("--steps", "2", "--seq", "16"),
}


@pytest.mark.parametrize("suite", sorted(SMALL))
def test_suite_rows_are_stored_and_reported(suite, tmp_path):
    run, rows = run_suite(tmp_path, suite, *SMALL[suite])
    assert rows and not [r for r in rows if "error" in r]
    assert main(["report", "--db", str(tmp_path / "results.sqlite"), "--out", str(tmp_path / "out")]) == 0
    assert f'<h2 id="{suite}">' in (tmp_path / "out" / "report.html").read_text()
