from fphtr.data.tokenizer import EOS, SOS, UNK, Tokenizer


def test_round_trip_and_specials():
    tok = Tokenizer("ba c\n")
    ids = tok.encode("a b\nc")
    assert ids[0] == SOS and ids[-1] == EOS
    assert tok.decode(ids[1:]) == "a b\nc"
    assert tok.encode("z")[1] == UNK
    assert tok.unknown_chars("az") == {"z"}


def test_decode_stops_at_eos():
    tok = Tokenizer("ab")
    a, b = tok.encode("ab")[1:3]
    assert tok.decode([a, EOS, b]) == "a"


def test_extend_keeps_existing_ids():
    tok = Tokenizer("abc")
    before = tok.encode("cab")
    assert tok.extend("\nab") == ["\n"]
    assert tok.encode("cab") == before
    assert len(tok) == 4 + 4


def test_serialisation():
    tok = Tokenizer("xyz")
    tok.extend("a")
    again = Tokenizer.from_dict(tok.to_dict())
    assert again == tok and again.encode("ax") == tok.encode("ax")
