"""Overfitting a handful of samples must reach CER 0: catches tokenizer, padding, mask and
position bugs anywhere between the collate function and the decoded string."""

import torch
from omegaconf import OmegaConf

from fphtr.data.datamodule import build_datamodule
from fphtr.lit_module import HTRModule
from fphtr.metrics import cer
from fphtr.model.fphtr import build_model

from .conftest import TINY, compose_train


def test_overfitting_a_few_lines_drives_cer_to_zero(tmp_path):
    cfg = compose_train(
        [
            *TINY,
            "data_format=word",
            "data_format.scale=0.3",
            "dataset.val_size=4",
            "decoder.dropout=0",
            "encoder.dropout=0",
            "optim.label_smoothing=0",
        ],  # fmt: skip
        tmp_path,
    )
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    torch.manual_seed(0)
    dm = build_datamodule(config)
    batch = next(iter(dm.val_dataloader()))  # 4 samples of different sizes: padding matters
    assert batch.sizes[:, 1].unique().numel() > 1
    module = HTRModule(build_model(config, len(dm.tokenizer)), dm.tokenizer, config)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    error = 1.0
    for step in range(1, 401):
        module.train()
        loss = module._loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            module.eval()
            error = cer(batch.texts, module.transcribe(batch))
            if error == 0:
                break
    assert error == 0, f"CER {error:.3f} after {step} steps (loss {loss.item():.3f})"
