"""Characters <-> token ids. The vocabulary travels inside every checkpoint."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<sos>", "<eos>", "<unk>")


class Tokenizer:
    """Character-level vocabulary with pad/start/end/unknown tokens at ids 0..3.

    New characters are only ever appended (`extend`), so the ids of a trained model's
    characters never move: a line model's output rows stay valid in a page model.
    """

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = []
        self._index: dict[str, int] = {}
        self.extend(chars)

    def extend(self, chars: Iterable[str]) -> list[str]:
        """Append unseen characters in sorted order; return the ones added."""
        added = sorted(set(chars) - set(self._index))
        for c in added:
            if len(c) != 1:
                raise ValueError(f"vocabulary entries must be single characters, got {c!r}")
            self._index[c] = len(SPECIALS) + len(self.chars)
            self.chars.append(c)
        return added

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def unknown_chars(self, text: str) -> set[str]:
        return {c for c in text if c not in self._index}

    def encode(self, text: str) -> list[int]:
        """Text -> [SOS, c1, ..., cn, EOS]; characters outside the vocabulary become UNK."""
        return [SOS, *(self._index.get(c, UNK) for c in text), EOS]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at the first EOS, skipping pad/start/unknown."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.chars[i - len(SPECIALS)])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, state: dict) -> Tokenizer:
        tok = cls([])
        tok.chars = list(state["chars"])
        tok._index = {c: len(SPECIALS) + i for i, c in enumerate(tok.chars)}
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.chars == other.chars
