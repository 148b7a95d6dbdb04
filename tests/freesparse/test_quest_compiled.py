"""Quest's compiled decode kernel: the same pages and the same output as the float64 reference and the torch form,
in every layout a cache takes, and a build that says what it lacks."""
from __future__ import annotations

import sys

import pytest
import torch

import attnkit
from attnkit.families import quest
from attnkit.kernels import compiled
from attnkit.kernels.gathered_keys import decode_page_attention
from attnkit.kernels.quest_decode import compiled_decode_step


def _inputs(B, H, Hkv, N, D, Dv, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, 1, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, Hkv, N, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, Hkv, N, Dv, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


def _reference(q, k, v, page, top_k):
    """The float64 equations: the query is the last token of the cache."""
    return quest._reference(q.double(), k.double(), v.double(), causal=True, mask=None, scale=q.shape[-1] ** -0.5,
                            page=page, top_k=top_k)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("B,H,Hkv,N,D,Dv,page,top_k", [
    (1, 2, 2, 40, 8, 8, 4, 3),       # the current page full
    (2, 4, 2, 43, 8, 6, 4, 4),       # GQA, values narrower than keys, the current page partial
    (1, 3, 1, 37, 16, 16, 5, 8),     # every past page read (top_k - 1 = 7 of 7)
    (1, 2, 2, 33, 8, 8, 4, 1),       # top_k = 1: the current page alone
    (1, 2, 1, 300, 64, 64, 16, 6),   # the widths the kernel is specialised for
    (1, 1, 1, 200, 128, 128, 16, 4),
])
def test_the_kernel_equals_the_reference(quest_kernel, dtype, tol, B, H, Hkv, N, D, Dv, page, top_k):
    q, k, v = _inputs(B, H, Hkv, N, D, Dv, dtype, seed=N + top_k)
    digest = quest.page_digest(k, page)
    out = compiled_decode_step(q, k, v, digest, page=page, top_k=top_k, scale=D ** -0.5)
    want = _reference(q, k, v, page, top_k)
    assert out.dtype == dtype and out.shape == (B, H, 1, Dv)
    assert (out.double() - want).abs().max() < tol
    past = quest.decode_pages(q, digest, N, page=page, top_k=top_k)  # the torch form, on the same call
    assert (out - decode_page_attention(q, k, v, past, page=page, scale=D ** -0.5)).abs().max() < tol


def test_ties_between_bounds_go_to_the_earlier_page_as_in_the_reference(quest_kernel):
    """Pages with equal keys have equal bounds: the kernel keeps the earliest, as the reference does."""
    g = torch.Generator().manual_seed(0)
    page, D = 4, 8
    one = torch.randn(1, 1, page, D, generator=g, dtype=torch.float64)
    k = torch.cat([one.repeat(1, 1, 6, 1), torch.randn(1, 1, 3, D, generator=g, dtype=torch.float64)], 2)  # 27 keys
    v = torch.randn(1, 1, 27, D, generator=g, dtype=torch.float64)
    q = torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64)
    out = compiled_decode_step(q, k, v, quest.page_digest(k, page), page=page, top_k=3, scale=0.3)
    want = quest._reference(q, k, v, causal=True, mask=None, scale=0.3, page=page, top_k=3)
    kept = quest.reference_mask(q, k, page=page, top_k=3)[0, 0, 0]
    assert kept[:8].all() and not kept[8:24].any()  # pages 0 and 1 of the six equal ones
    assert (out - want).abs().max() < 1e-12


def test_the_kernel_reads_a_cache_in_place_from_any_layout(quest_kernel):
    """A cache's growing buffer (keys and values in two buffers, longer than the cache), a digest whose rows are
    longer than its pages (its own buffer), and keys in a transposed layout all give the contiguous answer."""
    q, k, v = _inputs(2, 4, 2, 43, 8, 8, torch.float32, seed=5)
    buffer_k, buffer_v = torch.zeros(2, 2, 64, 8), torch.zeros(2, 2, 64, 8)
    buffer_k[:, :, :43], buffer_v[:, :, :43] = k, v
    digest = quest.page_digest(k, 4)
    digest_buffer = torch.zeros(2, 2, 16, 32)
    digest_buffer[..., :digest.shape[-1]] = digest
    want = compiled_decode_step(q, k, v, digest, page=4, top_k=4, scale=0.3)
    cases = [(buffer_k[:, :, :43], buffer_v[:, :, :43], digest_buffer[..., :digest.shape[-1]]),
             (k.transpose(1, 2).contiguous().transpose(1, 2), v, digest),
             (k, v, digest.mT.contiguous().mT)]  # a digest whose pages are not contiguous: copied
    for keys, values, bounds in cases:
        assert torch.equal(compiled_decode_step(q, keys, values, bounds, page=4, top_k=4, scale=0.3), want)


def test_two_threads_give_the_one_thread_answer(quest_kernel):
    q, k, v = _inputs(2, 8, 4, 300, 64, 64, torch.float32, seed=1)
    digest = quest.page_digest(k, 16)
    one = compiled_decode_step(q, k, v, digest, page=16, top_k=6, scale=0.125)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = compiled_decode_step(q, k, v, digest, page=16, top_k=6, scale=0.125)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_a_decode_loop_runs_the_kernel_and_matches_the_torch_form(quest_kernel, monkeypatch):
    """Through attnkit.attention: every step that reads in place runs the kernel, and a decode with the kernel
    switched off gives the same outputs."""
    _, k, v = _inputs(1, 4, 2, 80, 16, 16, torch.float32, seed=9)
    q = torch.randn(1, 4, 80, 16, generator=torch.Generator().manual_seed(1))  # a query for every token
    calls = []
    real = quest.compiled_decode_step
    monkeypatch.setattr(quest, "compiled_decode_step", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def decode():
        outs, state = [], None
        with torch.no_grad():
            _, state = attnkit.attention(q[:, :, :40], k[:, :, :40], v[:, :, :40], "quest", causal=True,
                                         return_state=True, page=4, top_k=5)
            for t in range(40, 80):
                out, state = attnkit.attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], "quest",
                                               causal=True, state=state, return_state=True, page=4, top_k=5)
                outs.append(out)
        return torch.cat(outs, 2)

    with_kernel = decode()
    assert len(calls) == 40
    with compiled.switched_off():
        without = decode()
    monkeypatch.setenv(compiled.SWITCH, "0")
    assert torch.equal(decode(), without)
    assert len(calls) == 40 and (with_kernel - without).abs().max() < 2e-6


def test_a_build_names_what_the_machine_lacks(monkeypatch):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "ninja", None)  # the PyPI package is not installed
    assert compiled.missing_tools() == ["a C++ compiler (c++ is not on PATH)", "ninja (pip install ninja)"]
    with pytest.raises(compiled.KernelBuildError, match=r"missing a C\+\+ compiler .* and ninja \(pip install ninja\)"):
        compiled.build("quest_decode")
    with pytest.raises(ValueError, match="kernel must be one of \\['quest_decode'\\], got 'flash'"):
        compiled.build("flash")


def test_a_kernel_that_is_not_built_is_never_compiled_at_run_time(tmp_path, monkeypatch):
    """With an empty kernel directory nothing is loaded, a decode step takes the torch form, and the build's name
    changes with what it is built from."""
    monkeypatch.setenv("ATTNKIT_KERNEL_DIR", str(tmp_path))
    compiled.forget_builds()
    try:
        assert compiled.loaded("quest_decode") is None
        assert compiled.status() == [{"kernel": "quest_decode", "built": False, "used": False,
                                      "path": str(compiled.built_path("quest_decode"))}]
        q, k, v = _inputs(1, 2, 2, 40, 8, 8, torch.float32, seed=2)
        with torch.no_grad():
            out, _ = attnkit.attention(q, k, v, "quest", causal=True, return_state=True, page=4, top_k=3)
        assert out.isfinite().all() and not any(tmp_path.iterdir())
    finally:
        compiled.forget_builds()
    name = compiled.build_name("quest_decode")
    monkeypatch.setattr(compiled.torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert compiled.build_name("quest_decode") != name and compiled.build_name("quest_decode").startswith("attnkit_quest_decode_")


def test_the_kernels_command_says_what_is_built_and_a_failed_build_in_one_line(tmp_path, monkeypatch, capsys):
    from attnkit.cli import main

    monkeypatch.setenv("ATTNKIT_KERNEL_DIR", str(tmp_path))
    compiled.forget_builds()
    try:
        assert main(["kernels"]) == 0
        assert capsys.readouterr().out.startswith(f"quest_decode: not built, torch form runs; {tmp_path}")
        monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
        monkeypatch.setitem(sys.modules, "ninja", None)
        assert main(["kernels", "--build"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("attnkit kernels: error: cannot build the compiled kernel")
    finally:
        compiled.forget_builds()


@pytest.mark.parametrize("sharpness", [0.01, 30.0])
def test_flat_and_sharp_softmaxes_equal_the_reference(quest_kernel, sharpness):
    """Scores spread over hundreds (weights far below float's smallest normal number) and scores all but equal.
    Scores of size ~100 carry float32 rounding of ~1e-5 into the weights, so the kernel is held to the torch form's
    own distance from the float64 reference, and to the torch form itself."""
    q, k, v = _inputs(1, 4, 2, 200, 16, 16, torch.float32, seed=4)
    q = q * sharpness
    digest = quest.page_digest(k, 8)
    out = compiled_decode_step(q, k, v, digest, page=8, top_k=6, scale=0.25)
    want = quest._reference(q.double(), k.double(), v.double(), causal=True, mask=None, scale=0.25, page=8, top_k=6)
    torch_form = decode_page_attention(q, k, v, quest.decode_pages(q, digest, 200, page=8, top_k=6), page=8,
                                       scale=0.25)
    assert out.isfinite().all() and (out - torch_form).abs().max() < 1e-6
    assert (out.double() - want).abs().max() < max(2e-6, 1.5 * (torch_form.double() - want).abs().max())


def test_a_build_that_does_not_load_is_reported_and_left_unused(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_KERNEL_DIR", str(tmp_path))
    monkeypatch.delenv(compiled.SWITCH, raising=False)
    compiled.forget_builds()
    try:
        path = compiled.built_path("quest_decode")
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a shared library")
        with pytest.warns(RuntimeWarning, match="does not load .* the torch form runs instead. Rebuild it"):
            assert compiled.loaded("quest_decode") is None
        q, k, v = _inputs(1, 2, 2, 40, 8, 8, torch.float32, seed=2)
        with torch.no_grad():  # reported once: the decode step runs its torch form quietly
            out, _ = attnkit.attention(q, k, v, "quest", causal=True, return_state=True, page=4, top_k=3)
        assert out.isfinite().all()
    finally:
        compiled.forget_builds()


def test_info_and_the_kernels_command_say_when_a_built_kernel_is_switched_off(quest_kernel, monkeypatch, capsys):
    from attnkit.cli import main

    assert main(["kernels"]) == 0
    assert capsys.readouterr().out.startswith("quest_decode: built, used; ")
    monkeypatch.setenv(compiled.SWITCH, "0")
    assert main(["kernels"]) == 0
    assert capsys.readouterr().out.startswith("quest_decode: built, off (ATTNKIT_COMPILED_KERNELS=0 or switched_off())")
    assert "compiled kernel 'quest_decode' (built, off" in attnkit.describe("quest")
