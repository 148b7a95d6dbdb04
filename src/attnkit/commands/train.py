"""``attnkit train lm``: train a DecoderLM on the Shakespeare corpus, report held-out perplexity.
``attnkit train seq2seq``: an RNN encoder-decoder with classic attention (see ``train_seq2seq``).

    attnkit train lm --mechanism softmax --minutes 10 --out ckpt.pt
    attnkit train lm --schedule LLLF --mix L=nha:window=32 --mix F=softmax --minutes 10
    attnkit train lm --schedule HH --mix H=hymba:softmax+nha --minutes 10
    attnkit train lm --schedule TTTT --mix T=mag:window=32 --mlp-ratio 2 --minutes 10
    attnkit train lm --resume ckpt.pt --minutes 5 --out ckpt2.pt
    attnkit train lm --layout swan --window 32 --context 128 --eval-contexts 128,512 --minutes 10
    attnkit train lm --sigma-reparam --minutes 10       # prints the attention entropy per layer
    attnkit train lm --layers 2 --kv-heads 2 --context 128 --passkey 0.5 --minutes 15 --out passkey.pt
    attnkit train seer --from ckpt.pt --block-size 16 --top-k 4 --minutes 5
    attnkit train seer-r --from ckpt.pt --block-size 16 --top-k 2 --minutes 5 --out gated.pt

``train seer`` turns a trained softmax LM into SeerAttention (gated block-sparse
attention) and trains only the gates, by self-distillation from the frozen model.

``--mix LETTER=MECHANISM[:key=value,...]``, ``LETTER=hymba:MECH+MECH`` or a Titans architecture
``LETTER=mac|mag|mal[:key=value,...]``, or JetBlock ``LETTER=jetblock[:conv_size=4,...]``.
"""
from __future__ import annotations

import json

from . import train_seer, train_seq2seq

NAME = "train"
HELP = "train a model on real text (attnkit train lm ...)"


# The flags that define the model: a checkpoint given with --resume defines it instead.
MODEL_FLAGS = ("mechanism", "schedule", "mix", "layers", "layout", "window", "sigma_reparam", "dim", "heads",
               "kv_heads", "mlp_ratio", "level")
# Training settings a resumed run takes from its checkpoint unless they are given.
TRAINING_DEFAULTS = {"context": 64, "batch": 32, "lr": 5e-3}


def add_arguments(parser) -> None:
    from ..bench.options import Parser, device, ints, non_negative_int, positive_float, positive_int

    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=Parser)
    p = sub.add_parser("lm", help="decoder-only LM on the Shakespeare corpus (the [train] extra)")
    p.add_argument("--mechanism", default="softmax", help="mechanism of every layer when --schedule is not given")
    p.add_argument("--schedule", default=None, help="layer letters, e.g. LLLF (then define letters with --mix)")
    p.add_argument("--mix", action="append", default=[], metavar="LETTER=SPEC", help="letter -> mechanism[:k=v,...] or hymba:a+b")
    p.add_argument("--layers", type=positive_int, default=4, help="number of layers when --schedule is not given")
    p.add_argument("--layout", choices=("rope_nope", "swan"), default=None,
                   help="positional layer schedule of --layers layers: RoPE (sliding-window with --window) layers with "
                        "a full NoPE layer every 4th ('Rope to Nope and Back Again'), or SWAN-GPT's sliding-window "
                        "RoPE + NoPE layers scaled logarithmically past --context")
    p.add_argument("--window", type=positive_int, default=None, help="window of --layout's local layers (swan: context / 4)")
    p.add_argument("--sigma-reparam", action="store_true",
                   help="sigmaReparam every linear layer of the blocks (W -> gamma W / sigma(W))")
    p.add_argument("--eval-contexts", type=ints, default=None, metavar="N,N",
                   help="also report held-out perplexity at these context lengths (extrapolation past --context)")
    p.add_argument("--dim", type=positive_int, default=64)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--kv-heads", type=positive_int, default=None)
    p.add_argument("--mlp-ratio", type=positive_float, default=4.0,
                   help="MLP width / model width (lower it to compare mixers with more parameters at equal size)")
    p.add_argument("--level", choices=("byte", "char"), default="byte")
    p.add_argument("--context", type=positive_int, default=None, help="training context (default 64; with --resume, the checkpoint's)")
    p.add_argument("--batch", type=positive_int, default=None, help="batch size (default 32; with --resume, the checkpoint's)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default 5e-3; with --resume, the checkpoint's)")
    p.add_argument("--minutes", type=positive_float, default=10.0)
    p.add_argument("--max-steps", type=non_negative_int, default=None, help="step budget (with --resume, 0 only evaluates)")
    p.add_argument("--eval-tokens", type=positive_int, default=65536)
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", type=device, default="cpu", help="torch device to train on (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, help="continue from this checkpoint (model, tokeniser, optimizer)")
    p.add_argument("--out", default=None, help="write the checkpoint here")
    p.add_argument("--sample", type=non_negative_int, default=None,
                   help="tokens to generate after training (default: up to the training context; 0: none)")
    p.add_argument("--passkey", type=positive_float, default=None, metavar="SHARE",
                   help="make this share of each batch's rows passkey-retrieval episodes ending the window (answer "
                        "included, its digits weighted in the loss) and half as many rows copy exercises, and report "
                        "passkey accuracy at --context after training")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.set_defaults(model_flag_defaults={name: p.get_default(name) for name in MODEL_FLAGS})
    train_seq2seq.add_arguments(sub)
    train_seer.add_arguments(sub)


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_mixer(text: str):
    """``nha:window=32,slots=16`` -> dict; ``hymba:softmax+nha`` -> hymba dict; ``mag:window=32`` -> titans
    dict; ``rnd_emb_qk:length=64`` -> a Deconstructing Attention variant; ``softmax`` -> str."""
    name, _, rest = text.partition(":")
    if name == "hymba":
        if not rest:
            raise ValueError(f"--mix {text!r}: hymba needs branches, e.g. hymba:softmax+nha")
        return {"hymba": [parse_mixer(b) for b in rest.split("+")]}
    options = {}
    for item in rest.split(",") if rest else ():
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--mix {text!r}: parameters are key=value pairs separated by commas")
        options[key] = parse_value(value)
    if name == "jetblock":
        return {"jetblock": options}
    if name in ("mac", "mag", "mal"):
        return {"titans": name, **options}
    if name in ("mlp", "non_approximate", "static_emb_qk", "rnd_emb_qk", "fixed_seq_qk"):
        return {"deconstructed": name, **options}
    return {"mechanism": name, **options} if options else name


def model_config(args, vocab_size: int):
    from ..models import ModelConfig, rope_nope_layers, swan_layers

    if args.layout is not None:
        if args.schedule is not None or args.mix:
            raise ValueError("--layout sets the schedule and mixers; leave out --schedule and --mix")
        if args.layout == "rope_nope":
            layers = rope_nope_layers(args.layers, window=args.window)
        else:
            layers = swan_layers(args.layers, window=args.window or max(1, args.context // 4), train_length=max(2, args.context))
        return ModelConfig(vocab_size=vocab_size, dim=args.dim, heads=args.heads, kv_heads=args.kv_heads,
                           mlp_ratio=args.mlp_ratio, sigma_reparam=args.sigma_reparam, **layers)
    if args.window is not None:
        raise ValueError("--window sets the local layers of --layout; give a window with --mix (e.g. F=sliding_window:window=32)")
    if args.schedule is None:
        schedule, mixers = "F" * args.layers, {"F": parse_mixer(args.mechanism)}
    else:
        schedule, mixers = args.schedule, {}
    for item in args.mix:
        letter, eq, spec = item.partition("=")
        if not eq or len(letter) != 1:
            raise ValueError(f"--mix {item!r}: expected LETTER=SPEC, e.g. L=nha")
        mixers[letter] = parse_mixer(spec)
    return ModelConfig(vocab_size=vocab_size, dim=args.dim, heads=args.heads, kv_heads=args.kv_heads,
                       schedule=schedule, mixers=mixers, mlp_ratio=args.mlp_ratio, sigma_reparam=args.sigma_reparam)


def run(args) -> int:
    if args.what == "seq2seq":
        return train_seq2seq.run(args)
    if args.what == "seer":
        return run_seer(args)
    if args.what == "seer-r":
        return run_seer(args, "seer_attention_r")
    import torch

    from ..data import shakespeare
    from ..data.codecs import make_codec
    from ..models import DecoderLM
    from ..training.lm import TrainConfig, evaluate, load_checkpoint, make_optimizer, save_checkpoint, train
    from ..training.metrics import attention_entropy_per_layer, eval_windows, model_perplexity

    if args.resume is None:
        _fill_training_settings(args, {})
        model_config(args, vocab_size=256)  # unknown mechanisms and bad mixers fail here, before any work
    else:
        _check_no_model_flags(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_text, held_text = shakespeare.load_split()
    if args.resume:
        model, codec, ckpt = load_checkpoint(args.resume)
        _fill_training_settings(args, ckpt.get("train_config") or {})
    cfg = TrainConfig(context=args.context, batch=args.batch, lr=args.lr, minutes=args.minutes,
                      max_steps=args.max_steps, eval_tokens=args.eval_tokens, seed=args.seed)
    if args.resume:
        model = model.to(args.device)
        optimizer = make_optimizer(model, cfg)
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
    else:
        codec = make_codec(args.level, train_text)
        model = DecoderLM(model_config(args, codec.vocab_size)).to(args.device)
        optimizer = make_optimizer(model, cfg)
    train_ids, held_ids = codec.encode(train_text), codec.encode(held_text)
    batches = None
    if args.passkey is not None:
        from ..data import passkey

        passkey.training_batch(codec, train_ids, cfg.context, 1, args.passkey, torch.Generator())  # bad sizes fail here
        batches = lambda g: passkey.training_batch(codec, train_ids, cfg.context, cfg.batch, args.passkey, g)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: schedule {model.config.schedule} {model.config.mixers}, {params / 1e6:.2f}M parameters, "
          f"{codec.kind}-level, {torch.get_num_threads()} threads, {args.device}; train {train_ids.numel():,} tokens, "
          f"held-out {held_ids.numel():,} tokens ({', '.join(shakespeare.HELD_OUT_WORKS)})")
    probe = eval_windows(held_ids, cfg.context, 4 * cfg.context)  # four held-out windows for the entropy
    entropy_before = attention_entropy_per_layer(model, probe)
    result = _train_with_progress(model, train_ids, cfg, optimizer, train, batches)
    metrics = evaluate(model, train_ids, held_ids, codec.vocab_size, cfg.context, cfg.eval_tokens)
    metrics["attention_entropy"] = {"start": entropy_before, "end": attention_entropy_per_layer(model, probe)}
    if args.eval_contexts:
        metrics["perplexity_at"] = {n: round(model_perplexity(model, eval_windows(held_ids, n, cfg.eval_tokens)), 3)
                                    for n in args.eval_contexts}
    metrics.update({k: result[k] for k in ("steps", "tokens", "seconds")})
    metrics["final_train_loss"] = round(sum(result["losses"][-20:]) / max(1, len(result["losses"][-20:])), 4)
    if args.passkey is not None:
        metrics["passkey_accuracy"] = passkey_accuracy(model, codec, held_ids, cfg.context, args.device)
    if args.out:
        save_checkpoint(args.out, model, codec, cfg, optimizer, metrics)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"steps {metrics['steps']}, {metrics['tokens']:,} tokens in {metrics['seconds']} s; "
              f"held-out perplexity {metrics['perplexity']} vs unigram baseline {metrics['unigram_perplexity']} "
              f"on {metrics['held_out_tokens']:,} held-out tokens" + (f"; checkpoint {args.out}" if args.out else "")
              + (f"; passkey accuracy {metrics['passkey_accuracy']} at {cfg.context} tokens" if args.passkey else ""))
        entropy = metrics["attention_entropy"]
        print("attention entropy per layer (nats, mean over heads and queries; '-' = no weights): start "
              + _layers(entropy["start"]) + ", end " + _layers(entropy["end"]))
        if args.eval_contexts:
            print("held-out perplexity by context (trained at " + str(cfg.context) + "): "
                  + ", ".join(f"{n}: {p}" for n, p in metrics["perplexity_at"].items()))
    prompt = codec.encode("HAMLET.\n")[None].to(args.device)
    room = cfg.context - prompt.shape[1]
    sample = room if args.sample is None else args.sample
    if sample > room:
        print(f"note: sampling {sample} tokens runs past the training context ({cfg.context}); "
              "the model was never trained on positions that far")
    if sample > 0:
        text = codec.decode(model.eval().generate(prompt, sample, temperature=0.8,
                                                  generator=torch.Generator(args.device).manual_seed(args.seed))[0].cpu())
        print("--- sample ---\n" + text)
    return 0


def _check_no_model_flags(args) -> None:
    """With --resume the checkpoint defines the model: a model flag that differs from its default is an error."""
    for name, default in args.model_flag_defaults.items():
        if getattr(args, name) != default:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} has no effect with --resume: the model comes from the checkpoint; leave {flag} out")


def _fill_training_settings(args, saved: dict) -> None:
    """Context, batch and learning rate not given: the checkpoint's (with --resume), else the defaults."""
    for name, default in TRAINING_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, saved.get(name, default))


def _layers(values) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:.3f}" for v in values) + "]"


def passkey_accuracy(model, codec, held_ids, context: int, device, trials: int = 32) -> float:
    """Share of held-out passkey prompts whose key the model generates greedily, the answer ending at ``context``."""
    import torch

    from ..data import passkey

    n = passkey.prompt_length(codec, context)  # the answer, too, within the trained context
    ids, keys = passkey.prompts(codec, held_ids, n, trials)
    with torch.no_grad():
        out = model.eval().generate(ids.to(device), 6)[:, n:]
    return sum(codec.decode(row.tolist()).strip()[:5] == key for row, key in zip(out.cpu(), keys)) / trials


def run_seer(args, mechanism: str = "seer_attention") -> int:
    """``train seer`` (SeerAttention's prefill gates) and ``train seer-r`` (SeerAttention-R's decode gates):
    the gated LM built from the checkpoint, its gates distilled with the base frozen, quality before and after."""
    import torch

    from ..data import shakespeare
    from ..training.lm import TrainConfig, load_checkpoint, save_checkpoint
    from ..training.metrics import eval_windows, model_perplexity
    from ..training.seer import distill_gates, gate_quality, seer_model
    from ..training.seer_decode import decode_gate_quality, distill_decode_gates

    distill, quality = {"seer_attention": (distill_gates, gate_quality),
                        "seer_attention_r": (distill_decode_gates, decode_gate_quality)}[mechanism]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base, codec, ckpt = load_checkpoint(args.base)
    context = args.context or ckpt.get("train_config", {}).get("context", 64)
    model = seer_model(base, block_size=args.block_size, top_k=args.top_k, mechanism=mechanism)
    train_text, held_text = shakespeare.load_split()
    windows = eval_windows(codec.encode(held_text), context, args.eval_tokens)
    metrics = {"context": context, "block_size": args.block_size, "top_k": args.top_k, "pool": args.pool,
               "dense_perplexity": round(model_perplexity(base, windows), 3)}
    before = quality(model, windows)
    metrics.update({"untrained_perplexity": round(model_perplexity(model, windows), 3),
                    "untrained_kept_mass": before["kept_mass"]})
    result = distill(model, codec.encode(train_text), context=context, batch=args.batch, lr=args.lr,
                     minutes=args.minutes, max_steps=args.max_steps, pool=args.pool, seed=args.seed)
    after = quality(model, windows)
    metrics.update({"perplexity": round(model_perplexity(model, windows), 3), "kept_mass": after["kept_mass"],
                    "density": after["density"], "steps": result["steps"], "seconds": result["seconds"],
                    "first_loss": round(result["losses"][0], 4) if result["losses"] else None,
                    "final_loss": round(sum(result["losses"][-10:]) / max(1, len(result["losses"][-10:])), 4)})
    if getattr(args, "out", None):
        save_checkpoint(args.out, model, codec, TrainConfig(context=context), metrics=metrics)
    if args.json:
        print(json.dumps(metrics))
    else:
        chosen = (f"top {args.top_k} per query block" if mechanism == "seer_attention"
                  else f"{args.top_k} blocks per query")
        print(f"{'SeerAttention' if mechanism == 'seer_attention' else 'SeerAttention-R'}, blocks of "
              f"{args.block_size}, {chosen} (density {metrics['density']:.2f} of the causal pairs), context {context}: "
              f"{result['steps']} distillation steps in {result['seconds']} s, loss {metrics['first_loss']} -> "
              f"{metrics['final_loss']}\n"
              f"held-out perplexity: dense {metrics['dense_perplexity']}, gated before training "
              f"{metrics['untrained_perplexity']} (keeps {metrics['untrained_kept_mass']:.1%} of the attention mass), "
              f"after {metrics['perplexity']} (keeps {metrics['kept_mass']:.1%})")
    return 0


def _train_with_progress(model, train_ids, cfg, optimizer, train, batches=None):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("training"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("step {task.fields[step]} loss {task.fields[loss]:.3f}"), TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("train", total=1.0, step=0, loss=float("nan"))
        result = train(model, train_ids, cfg, optimizer=optimizer, batches=batches,
                       on_step=lambda step, loss, used: bar.update(task, completed=used, step=step, loss=loss))
        bar.update(task, completed=1.0)
    return result
