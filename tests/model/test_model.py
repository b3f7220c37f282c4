"""Shapes, masking and the equality of teacher forcing and incremental decoding."""

import pytest
import torch

from fphtr.data.tokenizer import EOS, SOS
from fphtr.decoding import beam_search, greedy
from fphtr.model.encoder import positional_encoding_2d
from fphtr.model.fphtr import FPHTR

SIZES = {"word": (64, 256), "line": (96, 1024), "form": (640, 640)}


def small_model(vocab: int = 30, **kw) -> FPHTR:
    torch.manual_seed(0)
    args = dict(d_model=64, num_layers=2, nhead=4, dim_feedforward=128) | kw
    return FPHTR(vocab, **args).eval()


@pytest.mark.parametrize("fmt", sorted(SIZES))
def test_shapes_through_encoder_and_decoder(fmt):
    h, w = SIZES[fmt]
    model = small_model()
    images = torch.rand(2, 1, h, w)
    sizes = torch.tensor([[h, w], [h // 2, w // 3]])
    memory, padding = model.encode(images, sizes)
    s = (h // 32) * (w // 32)
    assert memory.shape == (2, s, 64) and padding.shape == (2, s)
    assert not padding[0].any()  # the full-size image has no padding
    assert padding[1].sum() == s - (h // 2 + 31) // 32 * ((w // 3 + 31) // 32)
    logits = model(images, sizes, torch.randint(4, 30, (2, 7)))
    assert logits.shape == (2, 7, 30)


def test_paper_model_shapes_on_a_large_page():
    # no fixed grid cap: a page larger than 100x100 feature cells still works
    pe = positional_encoding_2d(120, 110, 260)
    assert pe.shape == (260, 120, 110) and torch.isfinite(pe).all()
    model = FPHTR(80).eval()  # paper defaults: d_model 260, 6 layers, 4 heads, ff 1024
    assert model.decoder.d_model == 260 and len(model.decoder.layers) == 6
    memory, padding = model.encode(torch.rand(1, 1, 64, 128), torch.tensor([[64, 128]]))
    assert memory.shape == (1, 8, 260)


def test_padded_memory_is_never_attended():
    model = small_model()
    memory = torch.randn(1, 12, 64)
    padding = torch.zeros(1, 12, dtype=torch.bool)
    padding[0, 8:] = True
    tokens = torch.tensor([[SOS, 5, 6, 7]])
    out = model.decoder(tokens, model.decoder.memory_kv(memory), padding)
    memory[0, 8:] = 1e3 * torch.randn(4, 64)  # change only padded positions
    again = model.decoder(tokens, model.decoder.memory_kv(memory), padding)
    assert torch.allclose(out, again, atol=1e-5)


def _encode(model, length_hint):
    torch.manual_seed(1)
    images = torch.rand(3, 1, 64, 32 * length_hint)
    sizes = torch.tensor([[64, 32 * length_hint], [40, 100], [64, 64]])
    return model.encode(images, sizes), images, sizes


def test_greedy_equals_argmax_chain_of_teacher_forcing():
    model = small_model()
    (memory, padding), images, sizes = _encode(model, 8)
    out = greedy(model, memory, padding, max_len=40)
    tokens_in = torch.cat([torch.full((3, 1), SOS), out[:, :-1]], dim=1)
    teacher = model(images, sizes, tokens_in).argmax(-1)
    for row, ref in zip(out, teacher, strict=True):
        n = int((row == EOS).nonzero()[0]) + 1 if (row == EOS).any() else len(row)
        assert torch.equal(row[:n], ref[:n])  # same tokens up to and including EOS


@pytest.mark.parametrize("max_len", [30, 150, 700])  # word, line and form lengths
def test_cached_decoding_equals_full_recomputation(max_len):
    # an untrained decoder rarely emits EOS early, so the sequences run long
    model = small_model(vocab=12)
    with torch.no_grad():
        model.decoder.classifier.bias[EOS] = -1e4  # never stop: test the full length
    (memory, padding), _, _ = _encode(model, 4)
    cached = greedy(model, memory, padding, max_len, use_cache=True)
    full = greedy(model, memory, padding, max_len, use_cache=False)
    assert cached.shape == (3, max_len)
    assert torch.equal(cached, full)


def test_beam_width_one_equals_greedy():
    model = small_model()
    (memory, padding), _, _ = _encode(model, 8)
    g = greedy(model, memory, padding, 40)
    b1 = beam_search(model, memory, padding, 40, beam_width=1)
    n = min(g.shape[1], b1.shape[1])
    assert torch.equal(g[:, :n], b1[:, :n])


def test_beam_search_returns_its_best_scoring_hypothesis():
    model = small_model(vocab=8)
    (memory, padding), images, sizes = _encode(model, 4)
    out = beam_search(model, memory, padding, 12, beam_width=4, length_penalty=0.0)

    def logprob(seq):  # summed log probability of a sequence under teacher forcing
        seq = seq[: int((seq == EOS).nonzero()[0]) + 1] if (seq == EOS).any() else seq
        tokens_in = torch.cat([torch.tensor([SOS]), seq[:-1]])[None]
        lp = model(images[:1], sizes[:1], tokens_in).log_softmax(-1)[0]
        return lp.gather(1, seq[:, None]).sum()

    g = greedy(model, memory[:1], padding[:1], 12)[0]
    assert logprob(out[0]) >= logprob(g) - 1e-4  # beam 4 finds at least the greedy score here


def test_an_image_reads_the_same_alone_and_next_to_a_much_larger_one(varied_checkpoint):
    """Through the encoder (trained model, greedy): each word image alone, and batched
    top-left next to an image 3x its height and 6x its width. The transcription must not
    change. The memory at the image's own cells is close but not bit-equal: in the batch the
    CNN sees the canvas padding (paper, 0.0) beyond the image where alone it sees its own
    padding up to the next multiple of 32 and then the convolutions' zero padding; both are
    zeros at the input, but after a BatchNorm layer the canvas padding is no longer zero,
    and the receptive field reaches across the image's border. The padding mask keeps the
    decoder off the padded cells, which is what keeps the text the same."""
    from fphtr.checkpoint import load_model
    from fphtr.data.datamodule import build_datamodule, collate
    from fphtr.lit_module import HTRModule

    model, tokenizer, config = load_model(varied_checkpoint)
    config["dataset"]["val_size"] = 6
    dm = build_datamodule(config, splits=("val",))
    items = [dm.evaluation["val"][i] for i in range(6)]
    module = HTRModule(model, tokenizer, config).eval()
    batch_of = collate(tokenizer, tuple(config["data_format"]["canvas_multiple"]))
    texts = []
    for image, text, sample_id in items:
        big = image.repeat(1, 3, 6)  # a much larger image, with ink everywhere
        alone = module.transcribe(batch_of([(image, text, sample_id)]))[0]
        pair = batch_of([(image, text, sample_id), (big, text, "big")])
        assert pair.images.shape[-1] >= 6 * image.shape[-1] - 32
        assert module.transcribe(pair)[0] == alone, sample_id
        texts.append(alone)
    assert len(set(texts)) >= 5  # a model that reads: the images give different strings
