"""Equivalences that make fast decoding safe (nothing here is timed; see scripts/benchmark.py).

- the incremental step computes the same logits as the decoder on the whole sequence;
- a batch decodes exactly like each of its samples alone, whatever their lengths, and a
  sample that emitted EOS continues with PAD only;
- beam width 1 is greedy, batched or not; beam search is batch independent.
"""

import pytest
import torch

from fphtr.data.tokenizer import EOS, PAD, SOS
from fphtr.decoding import IncrementalDecoder, beam_search, decode, greedy, length_limits
from fphtr.model.decoder import Decoder
from fphtr.model.fphtr import FPHTR


class _DecoderOnly(torch.nn.Module):
    """All that greedy and beam_search use of an FPHTR: its decoder."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder


def _model(seed: int, eos_bias: float = 0.0) -> _DecoderOnly:
    torch.manual_seed(seed)
    decoder = Decoder(7, d_model=64, num_layers=2, nhead=4, dim_feedforward=128).eval()
    with torch.no_grad():
        decoder.classifier.bias[[PAD, SOS]] = -1e4  # outputs are characters or EOS
        decoder.classifier.bias[EOS] += eos_bias
        for layer in decoder.layers:  # let the image decide more than the prefix
            layer.cross_out.weight *= 5
    return _DecoderOnly(decoder)


def _memory(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Image memories (n, 24, 64) of different contrast, padded to different lengths."""
    torch.manual_seed(123)
    contrast = torch.tensor([1.0, 0.2, 0.5, 0.05])[:n, None, None]
    memory = torch.randn(n, 24, 64) * contrast
    valid = torch.tensor([24, 10, 17, 3])[:n, None]
    return memory, torch.arange(24)[None, :] >= valid  # True where padded


def _eos_lengths(ids: torch.Tensor) -> list[int | None]:
    return [int((r == EOS).nonzero()[0]) + 1 if (r == EOS).any() else None for r in ids]


@pytest.fixture(scope="module")
def ragged():
    """An untrained model and a batch whose samples stop at >= 3 different steps.
    (Untrained decoders stop where their weights happen to lead; search a few seeds.)"""
    memory, padding = _memory()
    for seed in range(10):
        for eos_bias in (1.0, 0.5, 1.5):
            model = _model(seed, eos_bias)
            lengths = _eos_lengths(greedy(model, memory, padding, 40))
            stopped = [n for n in lengths if n is not None]
            if len(set(stopped)) >= 3 and max(stopped) >= 4:
                return model, memory, padding
    raise AssertionError("no seed gives samples of different lengths")


def test_incremental_step_equals_decoder_forward():
    dec = _model(0).decoder
    memory, padding = _memory()
    tokens = torch.cat([torch.full((4, 1), SOS), torch.randint(3, 7, (4, 11))], dim=1)
    full = dec(tokens, dec.memory_kv(memory), padding)  # (4, 12, V), teacher forcing
    inc = IncrementalDecoder(dec, memory, padding, max_len=12)
    steps = torch.stack([inc.step(tokens[:, t]) for t in range(12)], dim=1)
    assert torch.allclose(steps, full, atol=1e-4, rtol=1e-4)


def test_incremental_step_with_beams_shares_the_memory():
    # 3 rows per image attend to one copy of the memory: same as 3 separate images
    model = _model(1)
    memory, padding = _memory(2)
    tokens = torch.randint(3, 7, (6, 5))
    shared = IncrementalDecoder(model.decoder, memory, padding, 5, repeat=3)
    copied = IncrementalDecoder(
        model.decoder, memory.repeat_interleave(3, 0), padding.repeat_interleave(3, 0), 5
    )
    for t in range(5):
        assert torch.allclose(shared.step(tokens[:, t]), copied.step(tokens[:, t]), atol=1e-5)


def test_batched_greedy_equals_each_sample_alone(ragged):
    model, memory, padding = ragged
    batched = greedy(model, memory, padding, 40)
    lengths = _eos_lengths(batched)
    for i, n in enumerate(lengths):
        alone = greedy(model, memory[i : i + 1], padding[i : i + 1], 40)[0]
        if n is None:  # never stopped: the full max_len
            assert batched.shape[1] == 40 and torch.equal(batched[i], alone)
        else:  # the same tokens up to EOS, then only PAD while others go on
            assert torch.equal(batched[i, :n], alone[:n])
            assert (batched[i, n:] == PAD).all()
            assert alone.shape[0] <= n + 8  # alone, it stopped soon after its EOS


def test_batched_cached_equals_full_recomputation(ragged):
    model, memory, padding = ragged
    cached = greedy(model, memory, padding, 40, use_cache=True)
    full = greedy(model, memory, padding, 40, use_cache=False)
    assert torch.equal(cached, full)


@pytest.mark.parametrize("sync_every", [1, 3, 8])
def test_stopping_early_does_not_change_the_result(ragged, sync_every):
    # the "all done" check runs every sync_every steps; the tokens never depend on it
    model, memory, padding = ragged
    ref = greedy(model, memory, padding, 40, sync_every=1)
    out = greedy(model, memory, padding, 40, sync_every=sync_every)
    assert torch.equal(out[:, : ref.shape[1]], ref)
    assert (out[:, ref.shape[1] :] == PAD).all()
    assert out.shape[1] < ref.shape[1] + sync_every


def test_beam_width_one_equals_greedy_on_a_ragged_batch(ragged):
    model, memory, padding = ragged
    g = greedy(model, memory, padding, 40)
    b1 = beam_search(model, memory, padding, 40, beam_width=1)
    assert torch.equal(g, b1)


def test_cached_beam_search_equals_full_recomputation(ragged):
    model, memory, padding = ragged
    cached = beam_search(model, memory, padding, 30, beam_width=3, length_penalty=0.6)
    full = beam_search(model, memory, padding, 30, 3, 0.6, use_cache=False)
    assert torch.equal(cached, full)


def test_beam_search_is_batch_independent_and_pads_after_eos(ragged):
    model, memory, padding = ragged
    batched = beam_search(model, memory, padding, 30, beam_width=3, length_penalty=0.6)
    for i, n in enumerate(_eos_lengths(batched)):
        alone = beam_search(model, memory[i : i + 1], padding[i : i + 1], 30, 3, 0.6)[0]
        stop = n if n is not None else batched.shape[1]
        assert torch.equal(batched[i, :stop], alone[:stop])
        assert (batched[i, stop:] == PAD).all()


def test_decode_dispatches_and_restores_the_thread_count():
    torch.manual_seed(0)
    model = FPHTR(7, d_model=64, num_layers=2, nhead=4, dim_feedforward=128).eval()
    images = torch.rand(4, 1, 64, 256)
    sizes = torch.tensor([[64, 256], [40, 100], [64, 64], [50, 200]])  # padded differently
    threads = torch.get_num_threads()
    g = decode(model, images, sizes, max_len=40)
    b = decode(model, images, sizes, max_len=40, beam_width=2)
    assert torch.get_num_threads() == threads
    assert g.shape[0] == b.shape[0] == 4


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_the_cpu_step_loop_runs_in_float32_under_bf16_autocast(ragged, search):
    # bf16-mixed validation encodes under autocast; the step loop must not follow it on the
    # CPU (its bf16 attention kernel is ~3.4x slower there) and must give float32's tokens
    model, memory, padding = ragged
    dtypes = []
    hook = model.decoder.layers[0].cross_q.register_forward_hook(
        lambda _m, _i, out: dtypes.append(out.dtype)
    )
    run = (lambda m: greedy(model, m, padding, 40)) if search == "greedy" else (
        lambda m: beam_search(model, m, padding, 40, beam_width=2))  # fmt: skip
    try:
        reference = run(memory)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dtypes.clear()
            mixed = run(memory.bfloat16())  # the encoder's output under autocast
    finally:
        hook.remove()
    assert set(dtypes) == {torch.float32}
    assert torch.equal(mixed, run(memory.bfloat16().float()))
    assert mixed.shape[0] == reference.shape[0]


def test_compaction_gives_the_same_tokens(ragged):
    # finished rows leave the batch (cache, memory, tokens); the others decode unchanged
    model, memory, padding = ragged
    for sync_every in (1, 4):
        compacted = greedy(model, memory, padding, 40, sync_every=sync_every)
        kept = greedy(model, memory, padding, 40, sync_every=sync_every, compact=False)
        assert torch.equal(compacted, kept)
        full = greedy(model, memory, padding, 40, use_cache=False, sync_every=sync_every)
        assert torch.equal(compacted, full)
        beams = beam_search(model, memory, padding, 30, 3, 0.6, sync_every=sync_every)
        beams_kept = beam_search(model, memory, padding, 30, 3, 0.6, sync_every=sync_every,
                                 compact=False)  # fmt: skip
        assert torch.equal(beams, beams_kept)


def test_per_sample_limits_stop_only_their_row(ragged):
    model, memory, padding = ragged
    free = greedy(model, memory, padding, 40, sync_every=1)
    limits = torch.tensor([3, 40, 5, 1])
    capped = greedy(model, memory, padding, 40, sync_every=1, max_lens=limits)
    for i, n in enumerate(limits.tolist()):
        stop = min(n, capped.shape[1])
        assert torch.equal(capped[i, :stop], free[i, :stop])  # the same prefix
        assert (capped[i, stop:] == PAD).all()
    beams = beam_search(model, memory, padding, 30, 2, sync_every=1, max_lens=limits)
    assert all(int((row != PAD).sum()) <= n for row, n in zip(beams, limits.tolist(), strict=True))


def test_length_limits_come_from_the_image_size_only():
    fmt = {"max_chars_per_cell": 2.0, "scale": 0.25, "max_height": 1600, "max_width": 1280}
    sizes = torch.tensor([[32, 64], [100, 100], [1600, 300]])
    # 2 cells and 16 cells of 32 px at scale 0.25 = 4x as many cells at 0.5; the framed one
    # may have been shrunk into the frame: no limit below max_len
    assert length_limits(sizes, 800, fmt).tolist() == [2 * 2 * 4 + 1, 16 * 2 * 4 + 1, 800]
    assert length_limits(sizes, 20, fmt).tolist() == [17, 20, 20]
    assert length_limits(sizes, 800, {**fmt, "max_chars_per_cell": None}) is None
