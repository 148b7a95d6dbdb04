"""attnkit bench content-sparse at a tiny size: every figure is stored, densities and recalls are fractions."""
from .stored import run_suite


def test_content_sparse_stores_time_density_and_recall(tmp_path):
    _, rows = run_suite(tmp_path, "content-sparse", "--n", "600", "--repeats", "1", "--recall-queries", "16")
    quality = [r for r in rows if r["section"] == "quality"]
    speed = [r for r in rows if r["section"] == "speed"]
    assert sorted(r["mechanism"] for r in quality) == ["moba", "nsa"]
    for r in quality:
        assert 0 < r["recall"] <= 1 + 1e-6 and r["density"] > 0 and r["queries"] == 16
    assert sorted(r["backward"] for r in speed) == [False, True]
    assert all(r["speedup_nsa"] > 0 and r["speedup_moba"] > 0 and r["t_sdpa"] > 0 for r in speed)


def test_content_sparse_measures_lm_recall_and_nsas_parts(tmp_path):
    import torch

    from attnkit.data.codecs import ByteCodec
    from attnkit.models import DecoderLM, ModelConfig
    from attnkit.training.lm import TrainConfig, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "lm.pt"
    save_checkpoint(path, DecoderLM(ModelConfig(vocab_size=256, dim=16, heads=2, schedule="FF")), ByteCodec(),
                    TrainConfig(context=32))
    _, rows = run_suite(tmp_path, "content-sparse", "--n", "600", "--repeats", "1", "--recall-queries", "8",
                        "--no-forward", "--checkpoint", str(path), "--nsa-parts")
    lm = [r for r in rows if r["section"] == "lm-recall"]
    assert sorted(r["mechanism"] for r in lm) == ["moba", "nsa"]
    for r in lm:
        assert len(r["lm_recall_per_layer"]) == 2 and 0 < r["lm_recall"] <= 1 + 1e-6 and r["head_dim"] == 8
    (parts,) = [r for r in rows if r["section"] == "nsa-parts"]
    parts_timed = ("sdpa", "nsa", "compression", "selected", "window", "selected_matmuls", "compression_matmuls",
                   "window_matmuls")
    assert all(parts[f"t_{p}"] > 0 for p in parts_timed)
    floor = parts["t_selected_matmuls"] + parts["t_compression_matmuls"] + parts["t_window"]
    assert parts["sdpa_over_floor"] == parts["t_sdpa"] / floor
    matmuls = parts["t_selected_matmuls"] + parts["t_compression_matmuls"] + parts["t_window_matmuls"]
    assert parts["sdpa_over_matmuls"] == parts["t_sdpa"] / matmuls
    assert parts["sdpa_over_selected"] == parts["t_sdpa"] / parts["t_selected"]


def test_content_sparse_times_dma_and_sparsek_on_request(tmp_path):
    _, rows = run_suite(tmp_path, "content-sparse", "--n", "300", "--repeats", "1", "--no-forward",
                        "--mechanisms", "dma,sparsek")
    (speed,) = [r for r in rows if r["section"] == "speed"]
    assert speed["speedup_dma"] > 0 and speed["speedup_sparsek"] > 0
    assert not [r for r in rows if r["section"] == "quality"]
