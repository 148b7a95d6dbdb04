"""``attnkit report`` writes a page that headless Chromium renders with all its images."""
import json
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
        for name, form, base in (("softmax", "sdpa", 1.0), ("softmax", "reference", 3.0), ("linear", None, 2.0)):
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
    for n in (512, 1024, 2048):
        store.add_row(run, {"pattern": "causal", "N": n, "direction": "fwd"},
                      {"seconds": n * 1e-5, "peak_mb": n / 64, "mem_x_qkv": 2.0, "sdpa_peak_mb": n / 32,
                       "sdpa_mem_ratio": 0.5, "gflops": 20.0, "gemm_gflops": 80.0, "gemm_ratio": 0.25,
                       "sdpa_ratio": 1.5, "flex_ratio": 0.5, "flex_cap": 2.0, "floor_seconds": n * 1e-6,
                       "density": 0.5})
    run = store.start_run("sparse", {}, MACHINE, "2.13.0", "0.1.0")
    for phase in ("prefill", "decode"):
        for s in (0.0, 0.5, 0.9):
            store.add_row(run, {"method": "window", "phase": phase, "sparsity": s}, {"quality": 1 - s / 2})
    return tuple(cab_runs)


def figure_points(path) -> None:
    """A small points file of ``bench mqar --figure``: the sweeps of attention, linear and Based at d=64,
    (64, 16), seed 0, their seed-1 points at the chosen rates, and attention's seed-0 point at (128, 32)."""
    from attnkit.bench._mqar_figure import FIGURE, FIGURE_ROLES
    from attnkit.bench._mqar_points import PointsFile
    from attnkit.bench.suites import mqar

    entries = {e["role"]: e for e in mqar.resolve_roles({**mqar.ROLES, **FIGURE_ROLES})}
    points = PointsFile(path)
    accuracy = {("attention", 0): [0.01, 1.0, 0.5], ("linear (elu+1)", 0): [0.01, 0.05, 0.2],
                ("based", 0): [0.01, 0.02, 0.3], ("attention", 1): 1.0, ("linear (elu+1)", 1): 0.4, ("based", 1): 0.3}
    chosen = {"attention": 3e-3, "linear (elu+1)": 1e-2, "based": 1e-2}
    trainings = [(role, 64, 16, 0, lr, acc) for (role, seed), accs in accuracy.items() if seed == 0
                 for lr, acc in zip((1e-3, 3e-3, 1e-2), accs)]
    trainings += [(role, 64, 16, 1, chosen[role], acc) for (role, seed), acc in accuracy.items() if seed == 1]
    trainings.append(("attention", 128, 32, 0, 3e-3, 0.9))
    for role, L, K, seed, lr, acc in trainings:
        item = {"role": role, "mechanism": entries[role]["mechanism"], "L": L, "K": K, "d": 64, "seed": seed, "lr": lr}
        figures = {"accuracy": acc, "seconds": 60.0, "state_size": 4096 if role == "linear (elu+1)" else 8192,
                   "epochs": 8, "status": "epochs"}
        points.append(item, figures, dict(FIGURE), entries[role], MACHINE, "abc")


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
    figure_points(tmp / "points.jsonl")
    assert cli_main(["report", "--db", str(tmp / "r.sqlite"), "--out", str(tmp / "out"), "--points",
                     str(tmp / "points.jsonl")]) == 0
    return tmp, runs


def test_report_writes_page_and_tables(report):
    tmp, _ = report
    out = tmp / "out"
    page = (out / "report.html").read_text()
    # kernels and CAB: time, memory, GEMM; MQAR; sparsity; the Zoology figure
    assert page.count("data:image/png;base64,") == 9
    assert "not registered" in page
    assert "GEMM measured in the same worker (80 GFLOP/s)" in page  # the kernels GEMM plot divides by that
    assert "<th title" in page and "<th>n</th>" not in page
    md = (out / "tables.md").read_text()
    assert "## cab_efficiency_length" in md and "## mqar" in md
    assert (out / "cab_patterns.csv").read_text().startswith("mechanism,")
    assert '"tables"' in (out / "results.json").read_text()


def test_the_answer_comes_first_and_names_the_machine(report):
    tmp, _ = report
    page = (tmp / "out" / "report.html").read_text()
    block = page.split("<section id='recommendation'>")[1].split("</section>")[0]
    assert page.index("id='recommendation'") < page.index('<h2 id="cab">')
    assert "test cpu, 2 threads, cpu, fp32 GEMM 100 GFLOP/s, torch 2.13.0" in block
    # kernels at the longest N: flex 2x attnkit's speed is 3x SDPA's; attnkit 1.5x with half SDPA's memory
    assert "<b>causal</b>, N=2048 (kernels): 1. <b>flex</b> (exact): 3× faster than SDPA; " \
           "2. <b>attnkit softmax</b> (exact): 1.5× faster than SDPA, 0.5× its memory; " \
           "3. <b>sdpa</b> (exact): the baseline" in block
    # the newer CAB run: at N=1024 linear takes 16 ms and SDPA 32 ms; memory 20.48 MiB against 10.24 MiB
    assert "<b>causal-self</b>, N=1024 (cab): 1. <b>linear</b> (approximate): 2× faster than SDPA, 2× its memory; " \
           "2. <b>softmax[sdpa]</b> (exact): the baseline; 3. <b>softmax[reference]</b> (exact): 3× slower than SDPA, " \
           "3× its memory" in block
    assert "1. <b>attention</b> 1.00 (state 8,192); 2. <b>linear (elu+1)</b> 0.30 (state 4,096)" in block
    speed = {(r["suite"], r["N"]): r for r in json.loads((tmp / "out" / "results.json").read_text())["tables"][
        "recommendation_speed"]}
    assert speed[("cab", 256)]["exact"] == "softmax[sdpa]" and speed[("cab", 256)]["approx"] == "linear"
    assert speed[("cab", 256)]["approx_speedup"] == pytest.approx(0.5)
    assert speed[("kernels", 512)]["approx"] == "-"


def test_every_column_shown_has_a_glossary_entry(report):
    tmp, _ = report
    glossary = (tmp / "out" / "report.html").read_text().split("id='glossary'")[1]
    assert "<code>sdpa_ratio</code>" in glossary and "<code>floor_seconds</code>" in glossary
    assert "(no entry)" not in glossary
    from attnkit.bench.report.glossary import entry

    assert entry("speedup_nsa")[1].startswith("SDPA's time / nsa's time") and entry("no such column") is None


def test_one_colour_per_mechanism_across_plots():
    from attnkit.bench.report import plots

    plots.new_palette()
    assert plots.colour("linear") == plots.colour("linear") != plots.colour("based")
    assert plots.colour("sdpa") == plots.colour("softmax[sdpa]") == plots.FIXED["sdpa"]
    assert plots.colour("softmax[reference]") == plots.FIXED["reference"]


def test_empty_database_says_what_to_run(tmp_path):
    Store(tmp_path / "empty.sqlite").close()
    assert cli_main(["report", "--db", str(tmp_path / "empty.sqlite"), "--out", str(tmp_path / "out"),
                     "--points", str(tmp_path / "no-points.jsonl")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "No stored run for" in page and "attnkit bench mqar" in page and "attnkit bench overview" not in page
    assert "Nothing measured yet" in page and "mqar-figure" not in page  # no points file: no figure


def test_the_zoology_figure_is_drawn_from_the_points_file(report):
    tmp, _ = report
    page = (tmp / "out" / "report.html").read_text()
    section = page.split("<h2 id='mqar-figure'>")[1].split("<h2")[0]
    assert "9 of 39 trainings of the learning-rate sweep and 7 of 351 planned points" in section
    assert "attention 0.003, linear (elu+1) 0.01, based 0.01." in section
    assert "data:image/png;base64," in section
    tables = json.loads((tmp / "out" / "results.json").read_text())["tables"]
    means = {(p["role"], p["L"]): p for p in tables["mqar_figure"]}
    assert set(means) == {("attention", 64), ("linear (elu+1)", 64), ("based", 64), ("attention", 128)}
    # linear: 0.2 and 0.4 over two seeds: mean 0.3, half-width t(1) * sd / sqrt(2) = 12.706 * 0.1414 / 1.414
    assert means["linear (elu+1)", 64]["accuracy"] == pytest.approx(0.3)
    assert means["linear (elu+1)", 64]["ci95"] == pytest.approx(1.2706, abs=1e-4)
    assert means["linear (elu+1)", 64]["seeds"] == 2 and means["attention", 128]["ci95"] is None
    verdicts = {(c["L"], c["claim"]): c["verdict"] for c in tables["mqar_figure_ordering"]}
    assert verdicts[64, "attention >= 0.95"] == "PASS" and verdicts[64, "based >= linear (elu+1) + 0.1"] == "FAIL"
    assert verdicts[128, "attention >= 0.95"] == "FAIL"  # 0.9 at (128, 32)
    assert verdicts[128, "based >= linear (elu+1) + 0.1"].startswith("n/a")
    assert "2 hold, 2 fail, 6 not measurable yet" in section
    # the 10 roles without a sweep miss all 27 (seed, L, K, d); attention 24 of them, linear and Based 25
    assert sum(len(m["roles"].split(", ")) for m in tables["mqar_figure_missing"]) == 270 + 24 + 25 + 25
    assert "Not finished yet (344 trainings)" in section


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
    assert dom.split('data-images-broken="')[1].split('"')[0] == ""
    assert images == 9 and rendered == images
    top, height = map(int, dom.split('data-recommendation-box="')[1].split('"')[0].split(","))
    assert top < 300 and height > 150  # the answer is laid out at the top of the page, not collapsed
    shot = tmp / "shot.png"
    chromium(tmp, "shot", f"--screenshot={shot}", "--window-size=1200,2400", url)
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 2400)
    pixels = imread(shot)
    assert pixels.std() > 0.05  # not a blank page: text, tables and plots were painted
