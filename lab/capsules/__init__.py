"""The capsule autoencoders of thesis chapter 2 (issue 3).

Components, each under its thesis name: ``GPNN`` (fig 2.2), ``ACR`` (fig 2.3, the
learned templates; rendering is ``lab.graphics``), ``CCR`` (fig 2.7/2.12), ``TMM``
and ``RMM`` (figs 2.9, 2.10), the regularizers of 2.4 (``regularizers``), and the
three autoencoders: ``ACAutoencoder`` (fig 2.6), ``SingleCCAutoencoder`` (2.7) and
``MixtureOfCCsAutoencoder`` (fig 2.12). ``CapsuleTrainer`` trains them; configs are
in ``configs``; figure data in ``analysis``.

Quick use::

    model = lab.capsules.load("runs/quick")           # a run directory or a .npz
    code = model.encode(images)                         # CapsuleCode (numpy)
    images2 = model.decode(code)                        # (N, H, W)
    rec = model.reconstruct(images, dropout=False)
"""
from __future__ import annotations

from pathlib import Path

from lab.capsules.acr import ACR
from lab.capsules.autoencoders import (MODELS, ACAutoencoder, CapsuleAutoencoder,
                                       MixtureOfCCsAutoencoder, SingleCCAutoencoder, build_model)
from lab.capsules.ccr import CCR
from lab.capsules.code import CapsuleCode
from lab.capsules.configs import CONFIGS, CapsuleConfig, get_config
from lab.capsules.gpnn import GPNN
from lab.capsules.managers import RMM, TMM


def find_checkpoint(path, which: str = "final") -> Path:
    """``path`` itself if it is a file, else the directory's latest valid state (``final.npz``
    or a newer ``ckpt-*.npz``); ``which="best"``: the directory's ``best.npz`` (lowest
    held-out error seen during training)."""
    from lab.checkpoint import newest_checkpoint  # noqa: PLC0415
    if which not in ("final", "best"):
        raise ValueError(f"which must be 'final' or 'best', got {which!r}")
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir() and which == "best":
        if (p / "best.npz").is_file():
            return p / "best.npz"
        raise FileNotFoundError(f"no best.npz in {path} (written by runs that evaluate held-out data)")
    if p.is_dir():
        found = newest_checkpoint(p)
        if found is not None:
            return found
    raise FileNotFoundError(f"no capsule checkpoint at {path} (expected a .npz file or a run "
                            "directory with final.npz or ckpt-*.npz)")


def load(checkpoint_or_dir) -> CapsuleAutoencoder:
    """The trained model stored in a checkpoint file or a run directory."""
    from lab.checkpoint import load_checkpoint  # noqa: PLC0415
    arrays, meta = load_checkpoint(find_checkpoint(checkpoint_or_dir))
    config = CapsuleConfig.from_dict(meta["config"])
    model = build_model(config, seed=int(meta.get("seed", 0)))
    model.load_state_arrays(arrays)
    model.meta = meta
    return model


def __getattr__(name):
    # The trainer pulls in the optimizers and checkpoints: import it on first use.
    if name == "CapsuleTrainer":
        from lab.capsules.trainer import CapsuleTrainer  # noqa: PLC0415
        return CapsuleTrainer
    raise AttributeError(name)


__all__ = ["ACAutoencoder", "ACR", "CCR", "CONFIGS", "CapsuleAutoencoder", "CapsuleCode",
           "CapsuleConfig", "CapsuleTrainer", "GPNN", "MODELS", "MixtureOfCCsAutoencoder",
           "RMM", "SingleCCAutoencoder", "TMM", "build_model", "find_checkpoint", "get_config",
           "load"]
