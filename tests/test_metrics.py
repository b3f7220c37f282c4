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


@pytest.mark.parametrize(
    "ref,hyp,expected",
    [
        ("abc", "abc ", (1, 3)),  # a trailing space is an inserted character
        ("abc", " abc", (1, 3)),  # so is a leading one
        (" abc", "abc", (1, 4)),  # and a reference's edge space counts and can be missed
        ("a\nb", "a\nb\n", (1, 3)),  # a page hypothesis ending in a line break
        ("ab", "ab" + " " * 20, (20, 2)),  # a runaway run of spaces is charged in full
        ("", " \n", (2, 0)),  # empty reference: every hypothesis character is an edit
        ("  ", "", (2, 2)),
    ],
)
def test_cer_counts_edge_whitespace(ref, hyp, expected):
    assert char_edits(ref, hyp) == expected
    m = ErrorRates()
    m.update([ref], [hyp])
    assert int(m.char_edits) == expected[0] and int(m.chars) == expected[1]
