"""The command line never prints a traceback: each mistake is one line on stderr and a non-zero exit."""
import sqlite3
import subprocess
import sys

import pytest

from attnkit.bench.store import APPLICATION_ID, SCHEMA_VERSION, Store
from attnkit.cli import main


def one_line_error(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["train", "lm", "--mechanism", "softmx"], "'softmax'"),                      # close-match hint
    (["bench", "cab", "--mechanisms", "softmax,linaer"], "'linear'"),
    (["bench", "kernels", "--patterns", "sliding_windw"], "did you mean 'sliding_window'"),
    (["info", "softmx"], "'softmax'"),
    (["list", "--family", "nosuch"], "unknown family 'nosuch'"),
    (["bench", "nosuch"], "invalid choice: 'nosuch'"),
    (["masks", "show", "causl"], "did you mean 'causal'"),
])
def test_unknown_names(capsys, argv, expected):
    assert expected in one_line_error(capsys, argv)


@pytest.mark.parametrize("argv, expected", [
    (["bench", "kernels", "--n", "abc"], "--n: expected a positive integer, got 'abc'"),
    (["bench", "kernels", "--n", "1024,,2048"], "comma-separated list"),
    (["bench", "kernels", "--n", "0"], "--n: expected a positive integer, got '0'"),
    (["bench", "kernels", "--heads", "0"], "--heads: expected a positive integer, got '0'"),
    (["bench", "mqar", "--lrs", "1e-3,nan"], "--lrs: expected a positive number"),
    (["train", "lm", "--minutes", "-1"], "--minutes: expected a positive number"),
    (["train", "lm", "--layout", "swan", "--schedule", "FF"], "leave out --schedule"),
    (["train", "lm", "--window", "8"], "--window sets the local layers of --layout"),
    (["train", "lm", "--resume", "lm.pt", "--dim", "32"], "--dim has no effect with --resume"),
    (["bench", "core", "--device", "cuda:7"], "--device"),
    (["report", "--compare", "1", "x"], "--compare"),
])
def test_numbers_that_do_not_parse(capsys, argv, expected):
    assert expected in one_line_error(capsys, argv)


def test_sizes_that_cannot_fit_are_refused_up_front_with_the_estimate(capsys, tmp_path):
    db = tmp_path / "r.sqlite"
    err = one_line_error(capsys, ["bench", "kernels", "--n", "10000000", "--db", str(db)])
    assert "N=10000000" in err and "GiB of memory" in err and "available" in err
    assert Store(db).latest_run("kernels") is None  # no run stored, nothing measured
    err = one_line_error(capsys, ["masks", "show", "causal", "--n", "10000000", "--out", str(tmp_path / "m.png")])
    assert "GiB of memory" in err and not (tmp_path / "m.png").exists()


def test_backward_alone_is_refused_not_mislabelled(capsys):
    err = one_line_error(capsys, ["bench", "kernels", "--directions", "fwd,bwd"])
    assert "unknown direction 'bwd'" in err and "fwdbwd" in err


def test_db_under_a_regular_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    err = one_line_error(capsys, ["bench", "core", "--no-memory", "--n", "32", "--db", str(tmp_path / "file" / "r.sqlite")])
    assert "is a file, not a folder" in err


def test_db_that_is_a_directory(capsys, tmp_path):
    assert "is a directory" in one_line_error(capsys, ["report", "--db", str(tmp_path)])


def test_corrupt_db(capsys, tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database, " * 400)
    before = bad.read_bytes()
    assert "cannot be used" in one_line_error(capsys, ["report", "--db", str(bad)])
    assert bad.read_bytes() == before


def test_another_programs_database_is_never_written(capsys, tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    err = one_line_error(capsys, ["bench", "vision", "--only", "ECA", "--channels", "8", "--size", "8",
                                  "--batch", "1", "--repeats", "1", "--db", str(other)])
    assert "another program's SQLite database" in err
    with sqlite3.connect(other) as db:
        assert [n for (n,) in db.execute("SELECT name FROM sqlite_master")] == ["notes"]
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0
    with sqlite3.connect(tmp_path / "marked.sqlite") as db:  # a database marked by another program, no tables
        db.execute("PRAGMA application_id = 1234")
    assert "another program" in one_line_error(capsys, ["report", "--db", str(tmp_path / "marked.sqlite")])


def test_attnkit_databases_are_marked_and_old_unmarked_ones_adopted(tmp_path):
    Store(tmp_path / "new.sqlite").close()
    with sqlite3.connect(tmp_path / "new.sqlite") as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    old = tmp_path / "old.sqlite"  # written before the marks: attnkit's two tables, application id 0
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
        db.execute("CREATE TABLE rows (run_id INTEGER)")
    Store(old).close()
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    with sqlite3.connect(tmp_path / "newer.sqlite") as db:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ValueError, match="newer attnkit"):
        Store(tmp_path / "newer.sqlite")


def test_report_never_creates_a_database(capsys, tmp_path):
    missing = tmp_path / "missing.sqlite"
    assert "no results database" in one_line_error(capsys, ["report", "--db", str(missing), "--out",
                                                            str(tmp_path / "out")])
    assert not missing.exists() and not (tmp_path / "out").exists()


def test_ctrl_c_while_the_machine_is_measured(capsys, tmp_path, monkeypatch):
    from attnkit.bench import machine

    def interrupted(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(machine, "machine_info", interrupted)
    db = tmp_path / "r.sqlite"
    err = one_line_error(capsys, ["bench", "core", "--no-memory", "--n", "32", "--db", str(db)], code=130)
    assert err.endswith("interrupted")
    assert Store(db).latest_run("core") is None  # no empty run left behind


def test_an_unexpected_error_is_one_line_too(capsys, monkeypatch):
    from attnkit.commands import info

    monkeypatch.setattr(info, "mechanism_info", lambda name: 1 / 0)
    err = one_line_error(capsys, ["info", "softmax"], code=1)
    assert "internal error: ZeroDivisionError" in err and "ATTNKIT_DEBUG=1" in err


def test_the_installed_command_prints_no_traceback(tmp_path):
    """The real entry point, in a subprocess: one line on stderr, exit code 2."""
    out = subprocess.run([sys.executable, "-m", "attnkit.cli", "bench", "kernels", "--n", "abc"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
