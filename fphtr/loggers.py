"""The logging edge: Lightning loggers built from the `logger` config group.

W&B never blocks on a login prompt: unless `logger.offline=false` is set explicitly, the
run is offline when no API key is configured (WANDB_API_KEY or a netrc entry), and the
end-of-run summary prints the `wandb sync` command that uploads it later.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def build_loggers(
    cfg: dict[str, Any],
    output_dir: Path,
    run_name: str,
    group: str | None,
    run_id: str | None = None,
    resumed_step: int | None = None,
) -> list[Logger]:
    """`cfg` is the resolved config; returns zero or one logger. A resumed training passes
    the W&B run it continues (`run_id`, stored in its checkpoints) and its first step."""
    lc = cfg["logger"]
    if lc["kind"] == "none":
        return []
    if lc["kind"] == "csv":
        # a resumed run writes csv/resumed-step<N>/ (Lightning replaces an existing file)
        version = "" if resumed_step is None else f"resumed-step{resumed_step}"
        return [CSVLogger(save_dir=output_dir, name="csv", version=version)]
    offline = lc["offline"] if lc["offline"] is not None else not wandb_key_configured()
    tags = [
        *cfg.get("tags", []),
        f"encoder:{cfg['encoder']['name']}",
        f"format:{cfg['data_format']['name']}",
        f"dataset:{cfg['dataset']['name']}",
    ]
    return [
        WandbLogger(
            project=lc["project"],
            entity=lc["entity"],
            group=lc["group"] or group,
            name=run_name,
            tags=tags,
            save_dir=str(output_dir),
            offline=offline,
            config=cfg,
            # one W&B run per training job, also inside a multirun (finished in train.py)
            reinit="finish_previous",
            id=run_id,
            resume="allow" if run_id else None,
        )
    ]


def finish_loggers(loggers: list[Logger]) -> str | None:
    """Close W&B runs (so sweep jobs never merge) and return the `wandb sync` command for
    an offline run, if any."""
    sync = None
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            import wandb

            run = lg.experiment
            if getattr(run, "offline", False):
                sync = f"wandb sync {Path(run.dir).parent}"
            wandb.finish()
    return sync
