"""``attnkit report`` writes a page that headless Chromium renders with all its images."""
import shutil
import struct
import subprocess

import pytest
from matplotlib.image import imread

from attnkit.bench.store import Store
from attnkit.cli import main as cli_main
from attnkit.registry import PATTERNS

MACHINE = {"cpu": "test cpu", "threads": 2, "gemm_gflops_fp32": 100.0}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def fill(store: Store) -> tuple[int, int]:
    """Store one small run of each suite (rows shaped as the suites write them) and a second cab run."""
    cab_runs = []
    for scale in (1.0, 2.0):
        run = store.start_run("cab", {"lengths": [256, 1024]}, MACHINE, "2.13.0", "0.1.0")
        store.add_row(run, {"probe": "softmax"}, {**{p: "ok" for p in PATTERNS}, "disagrees_with_spec": []})
        for name, form, base in (("softmax", "sdpa", 1.0), ("softmax", "reference", 3.0), ("lin", None, 2.0)):
            for n in (256, 1024):
                t = scale * base * (n / 256) ** (2 if name == "softmax" else 1) * 1e-3
                store.add_row(run, {"mechanism": name, "form": form, "causal": True, "N": n},
                              {"seconds": t, "peak_mb": n / 100 * base, **({"gflops": 10.0} if form else {})})
        store.set_status(run, "done")
        cab_runs.append(run)
    run = store.start_run("mqar", {}, MACHINE, "2.13.0", "0.1.0")
    for role, acc, size in (("attention", 1.0, 8192), ("linear (elu+1)", 0.3, 4096)):
        store.add_row(run, {"role": role, "mechanism": role, "L": 64, "K": 8, "d": 64, "lr": 1e-3},
                      {"accuracy": acc, "state_size": size, "epochs": 3, "seconds": 1.0})
    store.add_row(run, {"role": "based", "mechanism": None, "L": 64, "K": 8, "d": 64, "lr": None},
                  {"status": "not registered", "looked_for": ["based"]})
    run = store.start_run("kernels", {}, MACHINE, "2.13.0", "0.1.0")
    for n in (1024, 2048):
        store.add_row(run, {"pattern": "causal", "N": n, "direction": "fwd"},
                      {"pattern": "causal", "n": n, "direction": "fwd", "seconds": n * 1e-5, "peak_mb": n / 64,
                       "gflops": 20.0, "gemm_ratio": 0.2, "sdpa_ratio": 1.5, "flex_ratio": 0.5})
    run = store.start_run("sparse", {}, MACHINE, "2.13.0", "0.1.0")
    for phase in ("prefill", "decode"):
        for s in (0.0, 0.5, 0.9):
            store.add_row(run, {"method": "window", "phase": phase, "sparsity": s}, {"quality": 1 - s / 2})
    return tuple(cab_runs)


def chromium(tmp, name: str, *args: str) -> str:
    """Run headless Chromium with a fresh profile; its stdout goes through a file (a pipe can be held
    open by Chromium's helper processes after the browser exits)."""
    out = tmp / f"{name}.out"
    with open(out, "w") as f:
        subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp / ('profile-' + name)}", *args],
                       stdout=f, stderr=subprocess.DEVNULL, timeout=120, check=True)
    return out.read_text()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    store = Store(tmp / "r.sqlite")
    runs = fill(store)
    store.close()
    assert cli_main(["report", "--db", str(tmp / "r.sqlite"), "--out", str(tmp / "out")]) == 0
    return tmp, runs


def test_report_writes_page_and_tables(report):
    tmp, _ = report
    out = tmp / "out"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 8  # kernels and CAB: time, memory, GEMM; MQAR; sparsity
    assert "not registered" in page
    md = (out / "tables.md").read_text()
    assert "## cab_efficiency_length" in md and "## mqar" in md
    assert (out / "cab_patterns.csv").read_text().startswith("mechanism,")
    assert '"tables"' in (out / "results.json").read_text()


def test_empty_database_says_what_to_run(tmp_path):
    Store(tmp_path / "empty.sqlite").close()
    assert cli_main(["report", "--db", str(tmp_path / "empty.sqlite"), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "No stored run for" in page and "attnkit bench mqar" in page and "attnkit bench overview" not in page


def test_a_suite_without_its_own_section_is_shown_as_a_table(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    run = store.start_run("delta", {}, MACHINE, "2.13.0", "0.1.0")
    store.add_row(run, {"mechanism": "kda", "N": 96}, {"chunked_s": 0.25, "recurrent_s": 1.5})
    store.close()
    assert cli_main(["report", "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert '<h2 id="delta">delta</h2>' in page and "<td>kda</td>" in page and "<td>1.5</td>" in page


def test_compare_runs(report, capsys):
    tmp, (a, b) = report
    assert cli_main(["report", "--db", str(tmp / "r.sqlite"), "--compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert f"run {b} vs run {a}" in text and "seconds B/A" in text and "| 2 |" in text


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="no chromium on PATH: the rendering check needs a headless browser (CI installs Debian's "
                           "chromium; locally: apt-get install chromium)")
def test_page_renders_in_headless_chromium(report):
    tmp, _ = report
    url = (tmp / "out" / "report.html").as_uri()
    dom = chromium(tmp, "dom", "--virtual-time-budget=5000", "--dump-dom", url)
    images = int(dom.split('data-images="')[1].split('"')[0])
    rendered = int(dom.split('data-images-rendered="')[1].split('"')[0])
    assert images == 8 and rendered == images
    shot = tmp / "shot.png"
    chromium(tmp, "shot", f"--screenshot={shot}", "--window-size=1200,2400", url)
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 2400)
    pixels = imread(shot)
    assert pixels.std() > 0.05  # not a blank page: text, tables and plots were painted
