"""``model.weights``: the weights a new run starts from.

- a darknet ``.weights`` file (or a prefix such as ``darknet53.conv.74``): ``model/weights.py``;
- a yololab checkpoint (``.ckpt``), loaded with the safe loader (``load_checkpoint_file``: tensors and plain
  data only): its ``state_dict`` (with EMA on, the averaged weights validation used), ``model/transfer.py``;
- a run folder: its ``checkpoints/best.ckpt`` (best val mAP50), or ``last.ckpt`` when the run never validated:
  the checkpoint ``yololab eval`` and ``detect`` take by default (``detect.resolve_checkpoint``).

A file is a checkpoint when it starts with the zip signature of ``torch.save``; anything else is read as darknet
weights (whose first bytes are a small version number). Only the weights are taken, never the optimiser state,
epoch or schedule: the run is a new one (``--resume`` continues a run). Heads of another class count are
re-initialised; a 1-channel model takes a 3-channel source's first convolution summed over its channels; a
checkpoint of another cfg gives the layers both cfgs begin with (``model/transfer.py``).
"""

from __future__ import annotations

from pathlib import Path

from yololab.engine.checkpoint import CheckpointError, load_checkpoint_file
from yololab.model.darknet import Darknet

TORCH_ZIP_SIGNATURE = b"PK\x03\x04"  # torch.save writes a zip archive (its default since torch 1.6)
MODULE_PREFIX = "model."  # YoloModule keeps its Darknet as .model: checkpoint keys model.layers.<i>....


def resolve_source(source: str | Path) -> Path:
    """The file ``model.weights`` names: the file itself, or a run folder's best (else last) checkpoint."""
    path = Path(source)
    if path.is_dir():
        from yololab.detect import DetectError, resolve_checkpoint  # its one rule for a run folder's checkpoint

        try:
            return resolve_checkpoint(path, "best")[0]
        except DetectError as err:
            raise FileNotFoundError(f"model.weights: {err}") from None
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: {path} is neither a file nor a run folder")
    return path


def is_checkpoint(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(TORCH_ZIP_SIGNATURE)) == TORCH_ZIP_SIGNATURE


def load_start_weights(model: Darknet, source: str | Path) -> str:
    """Load ``model.weights`` into ``model`` (in place); returns the one line saying what was loaded, what was
    re-initialised and whether the first convolution was summed over RGB."""
    from yololab.model.cfg import parse_cfg
    from yololab.model.transfer import transfer_state
    from yololab.model.weights import load_darknet_weights

    path = resolve_source(source)
    if not is_checkpoint(path):
        return "start weights " + load_darknet_weights(model, path).summary()
    checkpoint = load_checkpoint_file(path)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not any(k.startswith(MODULE_PREFIX) for k in state):
        raise CheckpointError(path, None, "not a yololab checkpoint: no model weights in its state_dict")
    weights = {k[len(MODULE_PREFIX):]: v for k, v in state.items() if k.startswith(MODULE_PREFIX)}
    cfg_text = (checkpoint.get("hyper_parameters") or {}).get("cfg_text")
    sections = parse_cfg(cfg_text, source=f"{path} (its cfg)") if isinstance(cfg_text, str) else None
    report = transfer_state(model, weights, str(path), sections)
    epoch = checkpoint.get("epoch")
    epochs = f"{epoch + 1} epoch{'s' if epoch else ''}" if isinstance(epoch, int) else ""
    trained = f" (trained {epochs}; weights only: a new run)" if epochs else ""
    return f"start weights {report.summary()}{trained}"
