import jiwer
import pytest

from fphtr.metrics import ErrorRates, cer, char_edits, wer, word_edits


def test_hand_computed_cases():
    assert char_edits("kitten", "sitting") == (3, 6)  # 2 substitutions + 1 insertion
    assert word_edits("the cat sat", "the cat sat down") == (1, 3)
    assert cer(["abc"], ["abc"]) == 0.0
    assert wer(["a b"], [""]) == 1.0
    # corpus level: (1 + 0) edits / (2 + 8) characters, not the mean of 0.5 and 0
    assert cer(["ab", "abcdefgh"], ["a", "abcdefgh"]) == pytest.approx(0.1)


def test_cer_is_on_strings_not_token_ids():
    # the earlier re-implementation compared concatenated id strings ("12","3" -> "123")
    assert cer(["ab"], ["ba"]) == pytest.approx(1.0)
    assert cer(["hello world"], ["hello  world"]) == pytest.approx(1 / 11)


@pytest.mark.parametrize(
    "refs,hyps",
    [
        (["hello world", "the quick brown fox"], ["helo world", "the quick brown fax jumps"]),
        (["A MOVE to stop Mr. Gaitskell", "from nominating any more"],
         ["A MOVE to stop Mr Gaitskell", "form nominating any mor"]),
        (["line one\nline two", "x"], ["line one line too", "y"]),
    ],
)  # fmt: skip
def test_agrees_with_jiwer(refs, hyps):
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))
    assert wer(refs, hyps) == pytest.approx(
        jiwer.wer([" ".join(r.split()) for r in refs], [" ".join(h.split()) for h in hyps])
    )


def test_empty_strings_do_not_crash():
    assert char_edits("", "abc") == (3, 0)
    assert char_edits("abc", "") == (3, 3)
    assert word_edits("", "") == (0, 0)


def test_error_rates_accumulates_corpus_totals():
    m = ErrorRates()
    m.update(["ab"], ["a"])
    m.update(["abcdefgh"], ["abcdefgh"])
    out = m.compute()
    assert float(out["cer"]) == pytest.approx(0.1)
    assert float(out["wer"]) == pytest.approx(0.5)
