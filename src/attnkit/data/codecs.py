"""Byte- and character-level tokenisers: text <-> ``torch.long`` ids.

``ByteCodec`` maps UTF-8 bytes to ids 0..255 (nothing is ever unknown).
``CharCodec`` maps each character seen in its training text to an id; an
unseen character maps to the extra id ``unknown`` (the last one), so held-out
text is never silently altered or dropped.
"""
from __future__ import annotations

import torch


class ByteCodec:
    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": "byte"}


class CharCodec:
    kind = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.unknown = len(self.chars)
        self.vocab_size = len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index.get(c, self.unknown) for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] if i < self.unknown else "\ufffd" for i in (int(j) for j in ids))

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars}


def make_codec(level: str, train_text: str):
    if level == "byte":
        return ByteCodec()
    if level == "char":
        return CharCodec(train_text)
    raise ValueError(f"level must be 'byte' or 'char', got {level!r}")


def codec_from_dict(d: dict):
    if d.get("kind") == "byte":
        return ByteCodec()
    if d.get("kind") == "char":
        return CharCodec(d["chars"])
    raise ValueError(f"unknown codec description {d!r}; expected kind 'byte' or 'char'")
