"""The genre probe's passages (``attnkit bench sinks``): speeches of the right length, disjoint balanced splits."""
import pytest

from attnkit.bench._shakespeare_genre import COMEDIES, TRAGEDIES, speeches, splits

PLAY = """ACT I. SCENE 1.

[Enter ORSINO.]

ORSINO.
If music be the food of love, play on; give me excess of it, that, surfeiting,
the appetite may sicken, and so die. That strain again! it had a dying fall.
[Music.]

CURIO.
Will you go hunt, my lord?

SIR TOBY.
What a plague means my niece to take the death of her brother thus? I am sure care's an enemy to life, I say.
"""


def test_speeches_are_the_speakers_lines_of_twenty_to_forty_five_words():
    found = speeches(PLAY)
    assert len(found) == 2 and found[0].startswith("If music") and "[Music.]" not in found[0]
    assert all(20 <= len(s.split()) <= 45 for s in found)  # "Will you go hunt" is too short


def test_splits_are_disjoint_and_balanced():
    texts = {play: "\n\n".join(f"SPEAKER.\n{play} passage {i} " + "word " * 25 for i in range(12))
             for play in COMEDIES + TRAGEDIES}
    data = splits(texts, lambda s: True, support=3, dev=4, test=5)
    assert [len(data[n]) for n in ("support", "dev", "test")] == [6, 8, 10]
    seen = [s for n in data for s, _ in data[n]]
    assert len(seen) == len(set(seen))
    assert all(("gut" in s) and ((s.split()[0] in TRAGEDIES) == bool(label)) for n in data for s, label in data[n])
    with pytest.raises(ValueError, match="passages"):
        splits(texts, lambda s: True, support=30, dev=40, test=50)
