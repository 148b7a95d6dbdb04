"""Comedy or tragedy? Speeches of twelve Shakespeare plays for a few-shot genre probe (``attnkit bench sinks``).

A passage is one speech (the lines under a speaker's name, stage directions left out) of 20 to
45 words. The probe labels a passage by the nearer (cosine) of two centroids: the mean
embeddings of a few support passages of each genre. Nothing is trained, so the encoder alone
decides, and a change to the encoder (ACT's calibration) changes the support and the
queries alike, as it changes an LLM's demonstrations and question in the paper's tasks.
"""
from __future__ import annotations

import random
import re

COMEDIES = ("as_you_like_it_gut.txt", "twelfth_night_gut.txt", "much_ado_about_nothing_gut.txt",
            "midsummer_nights_dream_gut.txt", "merry_wives_of_windsor_gut.txt", "taming_of_the_shrew_gut.txt")
TRAGEDIES = ("hamlet_gut.txt", "macbeth_gut.txt", "lear_gut.txt", "othello_gut.txt", "romeo_and_juliet_gut.txt",
             "julius_caesar_gut.txt")
SPEAKER = re.compile(r"[A-Z][A-Z .'-]+\.")


def speeches(text: str, low: int = 20, high: int = 45) -> list[str]:
    """The speeches of a play's text with ``low`` to ``high`` words, each on one line."""
    found = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().split("\n")
        if len(lines) < 2 or not SPEAKER.fullmatch(lines[0].strip()):
            continue
        body = " ".join(line.strip() for line in lines[1:] if not line.strip().startswith("["))
        if low <= len(body.split()) <= high:
            found.append(body)
    return found


def splits(texts: dict, keep, *, support: int, dev: int, test: int, seed: int = 0) -> dict:
    """``{"support", "dev", "test"}`` -> ``[(passage, label)]`` with ``support``, ``dev``, ``test`` passages per
    genre (label 0 comedy, 1 tragedy), disjoint, drawn at random from the speeches ``keep(passage)`` accepts.
    ``texts`` maps a play's file name to its text."""
    rng = random.Random(seed)
    chosen = {}
    for label, plays in enumerate((COMEDIES, TRAGEDIES)):
        pool = [s for play in plays for s in speeches(texts[play]) if keep(s)]
        if len(pool) < support + dev + test:
            raise ValueError(f"only {len(pool)} passages of genre {label}; asked for {support + dev + test}")
        rng.shuffle(pool)
        chosen[label] = pool
    bounds = {"support": (0, support), "dev": (support, support + dev), "test": (support + dev, support + dev + test)}
    return {name: [(s, label) for label in (0, 1) for s in chosen[label][a:b]] for name, (a, b) in bounds.items()}
