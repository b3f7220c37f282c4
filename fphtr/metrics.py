"""CER and WER: the project's one definition, used by validation, evaluation and reports.

Both are corpus level (micro): total edit operations over the whole set divided by the total
number of reference characters (CER) or words (WER), never a mean of per-sample rates.

- Computed on decoded strings, case sensitive, punctuation kept as is.
- CER counts every character, including spaces and the "\\n" between the lines of a form.
- WER splits on any whitespace (so a line break also separates words); punctuation stays
  attached to its word, as written.

Edit counts come from jiwer, on the raw strings: its default character transform strips
leading and trailing whitespace, which would leave a trailing "\\n" or a runaway run of
spaces uncharged, so `_CHARS` only splits into characters. `ErrorRates` sums the counts in
torchmetrics states so that under DDP the totals are summed across processes before
dividing.
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import torch
from torchmetrics import Metric

# every character as written, edge whitespace included (jiwer's default strips it)
_CHARS = jiwer.ReduceToListOfListOfChars()


def char_edits(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit operations, reference length) at character level, every character counted."""
    if not reference:
        return len(hypothesis), 0
    if not hypothesis:
        return len(reference), len(reference)
    out = jiwer.process_characters(
        reference, hypothesis, reference_transform=_CHARS, hypothesis_transform=_CHARS
    )
    return out.substitutions + out.deletions + out.insertions, len(reference)


def word_edits(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit operations, reference word count) at word level, words split on whitespace."""
    ref_words, hyp_words = reference.split(), hypothesis.split()
    if not ref_words:
        return len(hyp_words), 0
    if not hyp_words:
        return len(ref_words), len(ref_words)
    out = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
    return out.substitutions + out.deletions + out.insertions, len(ref_words)


def _rate(edits: float, total: float) -> float:
    return edits / total if total else float(edits > 0)


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus-level character error rate."""
    pairs = [char_edits(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return _rate(sum(e for e, _ in pairs), sum(n for _, n in pairs))


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus-level word error rate."""
    pairs = [word_edits(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return _rate(sum(e for e, _ in pairs), sum(n for _, n in pairs))


class ErrorRates(Metric):
    """Accumulates character and word edits; `compute()` -> {"cer": ..., "wer": ...,
    "skipped": number of samples left out as unreadable}."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("char_edits", "chars", "word_edits", "words", "skipped"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.skipped_ids: set[str] = set()  # this process's, over all epochs (not reset)

    def skip(self, ids: Sequence[str]) -> None:
        """Samples left out because their image could not be decoded: counted, not scored."""
        self.skipped += len(ids)
        self.skipped_ids.update(ids)

    def update(self, references: Sequence[str], hypotheses: Sequence[str]) -> None:
        for ref, hyp in zip(references, hypotheses, strict=True):
            ce, cn = char_edits(ref, hyp)
            we, wn = word_edits(ref, hyp)
            self.char_edits += ce
            self.chars += cn
            self.word_edits += we
            self.words += wn

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "cer": torch.tensor(_rate(float(self.char_edits), float(self.chars))),
            "wer": torch.tensor(_rate(float(self.word_edits), float(self.words))),
            "skipped": self.skipped.clone(),
        }
