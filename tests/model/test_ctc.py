"""The CTC head, the joint loss, the encoder's last stride: each does what its config says."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from fphtr.checkpoint import init_from_checkpoint
from fphtr.config import ConfigError, validate
from fphtr.data.datamodule import build_datamodule
from fphtr.data.tokenizer import EOS, PAD, SOS, Tokenizer
from fphtr.lit_module import HTRModule
from fphtr.model.ctc import BLANK, CTCHead, ctc_greedy, ctc_loss
from fphtr.model.fphtr import FPHTR, build_model

from ..conftest import TINY, compose_train


def make(tmp_path, *overrides):
    cfg = compose_train([*TINY, *overrides], tmp_path)
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    dm = build_datamodule(config)
    torch.manual_seed(0)
    module = HTRModule(build_model(config, len(dm.tokenizer)), dm.tokenizer, config)
    return module, dm


def test_ctc_weight_zero_is_the_papers_model(tmp_path):
    module, dm = make(tmp_path, "optim.ctc_weight=0")
    assert module.model.ctc is None
    assert not any(k.startswith("ctc.") for k in module.model.state_dict())
    # the same weights as the model built without any of the new options
    torch.manual_seed(0)
    plain = FPHTR(len(dm.tokenizer), d_model=128, num_layers=2, nhead=4, dim_feedforward=256)
    ours = module.model.state_dict()
    assert plain.state_dict().keys() == ours.keys()
    assert all(torch.equal(v, ours[k]) for k, v in plain.state_dict().items())
    # and the loss is the plain teacher-forced cross-entropy
    module.eval()
    batch = next(iter(dm.val_dataloader()))
    logits = plain.eval()(batch.images, batch.sizes, batch.tokens[:, :-1])
    expected = F.cross_entropy(
        logits.transpose(1, 2), batch.tokens[:, 1:], ignore_index=PAD, label_smoothing=0.1
    )
    assert module._loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_joint_loss_mixes_attention_and_ctc(tmp_path):
    module, dm = make(tmp_path, "optim.ctc_weight=0.3")
    assert isinstance(module.model.ctc, CTCHead)
    module.eval()
    batch = next(iter(dm.val_dataloader()))
    losses = module._losses(batch)
    assert losses["ctc"].item() > 0
    mixed = 0.7 * losses["att"] + 0.3 * losses["ctc"]
    assert losses["loss"].item() == pytest.approx(mixed.item(), rel=1e-6)
    # w=1 is CTC only: the decoder is not run (no gradient), the encoder learns
    module1, _ = make(tmp_path, "optim.ctc_weight=1")
    module1._loss(batch).backward()
    assert module1.model.decoder.classifier.weight.grad is None
    assert module1.model.encoder.proj.weight.grad.abs().sum() > 0


def test_ctc_pretrain_steps_train_the_encoder_alone_first(tmp_path):
    module, dm = make(tmp_path, "optim.ctc_weight=0.3", "optim.ctc_pretrain_steps=10")
    batch = next(iter(dm.val_dataloader()))
    module.train()  # global_step is 0 < 10: CTC only, the decoder is not even run
    losses = module._losses(batch)
    assert set(losses) == {"loss", "ctc"}
    losses["loss"].backward()
    assert module.model.decoder.classifier.weight.grad is None
    assert module.model.encoder.proj.weight.grad.abs().sum() > 0
    module.eval()  # evaluation always scores the joint loss
    assert set(module._losses(batch)) == {"loss", "att", "ctc"}


def test_ctc_frames_cover_the_valid_width_only():
    head = CTCHead(d_model=8, vocab_size=10, frames_per_column=4)
    f = torch.randn(2, 8, 2, 8)
    padded = torch.zeros(2, 2, 8, dtype=torch.bool)
    padded[1, :, 5:] = True  # second image: 5 valid columns
    padded[1, 1, :] = True  # and one valid row
    logits, lengths = head(f, padded)
    assert logits.shape == (2, 32, 10)
    assert lengths.tolist() == [32, 20]
    # the padded row and columns do not change the valid frames
    g = f.clone()
    g[1, :, 1, :] = 100.0
    g[1, :, :, 5:] = -100.0
    logits2, _ = head(g, padded)
    assert torch.allclose(logits[1, :20], logits2[1, :20], atol=1e-5)


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    seq = [BLANK, 5, 5, BLANK, 5, 6, 6, BLANK, 7, 7]
    logits = F.one_hot(torch.tensor([seq]), 10).float()
    assert ctc_greedy(logits, torch.tensor([10])) == [[5, 5, 6, 7]]
    assert ctc_greedy(logits, torch.tensor([6])) == [[5, 5, 6]]  # frames past the length


def test_ctc_loss_targets_are_the_characters():
    # a perfect alignment of "5 5 6" costs ~0; SOS, EOS and PAD are not targets
    seq = [5, BLANK, 5, 6, BLANK, BLANK]
    logits = F.one_hot(torch.tensor([seq]), 10).float() * 50
    tokens = torch.tensor([[SOS, 5, 5, 6, EOS, PAD, PAD]])
    assert ctc_loss(logits, torch.tensor([6]), tokens).item() < 1e-3
    wrong = torch.tensor([[SOS, 5, 6, 6, EOS, PAD, PAD]])
    assert ctc_loss(logits, torch.tensor([6]), wrong).item() > 10


def test_last_stride_16_quadruples_the_memory_with_the_same_weights():
    torch.manual_seed(0)
    m32 = FPHTR(20, d_model=64, num_layers=1, dim_feedforward=64)
    m16 = FPHTR(20, d_model=64, num_layers=1, dim_feedforward=64, last_stride=16)
    m16.load_state_dict(m32.state_dict())  # same parameters: checkpoints transfer
    images, sizes = torch.rand(1, 1, 64, 256), torch.tensor([[64, 160]])
    mem32, pad32 = m32.eval().encode(images, sizes)
    mem16, pad16 = m16.eval().encode(images, sizes)
    assert mem32.shape[1] == 2 * 8 and mem16.shape[1] == 4 * 16
    assert (~pad32).sum() == 2 * 5 and (~pad16).sum() == 4 * 10  # ceil(160 / stride) columns


def test_validation_logs_the_ctc_reading(tmp_path):
    module, dm = make(tmp_path, "optim.ctc_weight=0.5")
    module.eval()
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    with torch.no_grad():
        for i, batch in enumerate(dm.val_dataloader()):
            module.validation_step(batch, i)
    module.train_probe = None
    module._eval_epoch_end("val")
    assert "val/cer_ctc" in logged and logged["val/cer_ctc"] >= 0
    assert "val/cer" in logged


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["optim.ctc_weight=1.5"], "optim.ctc_weight"),
        (["optim.ctc_weight=-0.1"], "optim.ctc_weight"),
        (["encoder.last_stride=8"], "encoder.last_stride"),
        (["optim.ctc_weight=0.3", "model.ctc_frames_per_column=0"], "model.ctc_frames_per_column"),
        (["optim.ctc_pretrain_steps=100"], "optim.ctc_pretrain_steps"),  # no CTC head
        (["optim.ctc_weight=0.3", "optim.ctc_pretrain_steps=-1"], "optim.ctc_pretrain_steps"),
    ],
)
def test_impossible_values_are_refused(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_train([*TINY, *overrides], tmp_path))


def test_pages_get_no_ctc_head_with_a_warning(tmp_path, caplog):
    # a page is no single CTC sequence; the quick start's CTC setting must not block
    # `fphtr-train data_format=form`, so the weight is set to 0 before any work, and said
    cfg = compose_train([*TINY, "data_format=form", "optim.ctc_weight=0.3"], tmp_path)
    with caplog.at_level("WARNING"):
        validate(cfg)
    assert cfg.optim.ctc_weight == 0.0
    assert "optim.ctc_weight=0.3 set to 0 for data_format=form" in caplog.text
    quick = compose_train(["data_format=form"], tmp_path)  # the default experiment
    validate(quick)
    assert quick.optim.ctc_weight == 0.0


def test_a_ctc_line_model_starts_a_page_model_without_the_head(tmp_path):
    torch.manual_seed(0)
    line = FPHTR(20, d_model=64, num_layers=1, dim_feedforward=64, ctc_frames_per_column=4)
    path = tmp_path / "line.ckpt"
    state = {f"model.{k}": v for k, v in line.state_dict().items()}
    torch.save(
        {"state_dict": state, "fphtr": {"config": {}, "tokenizer": {"chars": "abcdefghijklmnop"}}},
        path,
    )
    page_vocab = Tokenizer("abcdefghijklmnop")
    page_vocab.extend("\n")  # as transfer_tokenizer builds it
    page = FPHTR(21, d_model=64, num_layers=1, dim_feedforward=64)
    init_from_checkpoint(page, path, page_vocab)
    assert torch.equal(page.encoder.proj.weight, line.encoder.proj.weight)
    hybrid = FPHTR(21, d_model=64, num_layers=1, dim_feedforward=64, ctc_frames_per_column=4)
    init_from_checkpoint(hybrid, path, page_vocab)
    assert torch.equal(hybrid.ctc.classifier.weight[:20], line.ctc.classifier.weight)


def test_compile_compiles_the_trunk_in_place(tmp_path):
    plain, _ = make(tmp_path)
    compiled, _ = make(tmp_path, "compile=true")
    assert plain.model.encoder.trunk._compiled_call_impl is None
    assert compiled.model.encoder.trunk._compiled_call_impl is not None
    # parameter names, hence checkpoints, are those of the uncompiled model
    assert compiled.model.state_dict().keys() == plain.model.state_dict().keys()
