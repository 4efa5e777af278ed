"""Checkpoint files: atomic writes, loads that never unpickle code, and the clean-up of killed writes.

- ``AtomicCheckpointIO``: a kill during a save never leaves a truncated ``last.ckpt``; every load goes through
  :func:`load_checkpoint_file`.
- :func:`load_checkpoint_file`: ``torch.load(weights_only=True)``: tensors, plain Python data and the few
  classes on ``SAFE_GLOBALS``; a file that asks for anything else is refused with one line.
- :func:`remove_stale_temporaries`: the temporary files that killed writes leave behind.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from yololab.errors import FileProblem

FILE_MODE = 0o666  # what open() would request before the umask
TEMPORARY_PATTERN = ".*.ckpt.*.tmp"  # what AtomicCheckpointIO writes before the rename (mkstemp's name)


class CheckpointError(FileProblem):
    """A checkpoint that cannot be used: unreadable, refused by the safe loader, or of another model."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _safe_globals() -> list[Any]:
    """Classes a yololab checkpoint may hold besides tensors and plain data: Lightning's AttributeDict (what
    ``save_hyperparameters`` keeps, depending on the Lightning version). Nothing that can run code."""
    from lightning.fabric.utilities.data import AttributeDict

    return [AttributeDict]


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict at ``path``, loaded with ``weights_only=True`` whatever the environment says
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` only changes torch's default, not an explicit argument).

    Raises CheckpointError for a missing, truncated or non-checkpoint file, and for one that would need
    arbitrary Python objects to load (what a crafted file uses to run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, None, "no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(path, None, _refusal(str(err))) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(path, None, f"not a readable checkpoint: {first}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, None, f"not a checkpoint: holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def _refusal(error: str) -> str:
    """What torch's weights-only unpickler refused, in one line: the Python object the file asks for (torch's
    message names it as ``GLOBAL module.name``; the rest of it is advice to load the file unsafely)."""
    wanted = re.search(r"GLOBAL (\S+?)\.?(?:\s|$)", error)
    what = f"the Python object {wanted.group(1)}" if wanted else "Python objects beyond tensors and plain data"
    return (f"refused: it needs {what}, which could run code when loaded; yololab loads checkpoints with "
            "tensors and plain data only")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed checkpoint writes left in ``folder``; returns them.

    Call it only when no save of this run is in progress (at the start or resume of the run)."""
    stale = sorted(Path(folder).glob(TEMPORARY_PATTERN))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same folder, fsyncs, then renames over the target.

    ``os.replace`` is atomic on POSIX and Windows when both paths are on one filesystem, so readers see
    either the old complete file or the new complete file. Loads use :func:`load_checkpoint_file`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, FILE_MODE & ~_umask())  # mkstemp creates 0600; give the usual permissions
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint_file(path, map_location if map_location is not None else "cpu")


def load_module(path: str | Path):
    """The YoloModule of a checkpoint file, on the CPU, loaded safely; CheckpointError naming the file if the
    weights do not fit the model its own cfg describes."""
    from yololab.engine.module import YoloModule

    checkpoint = load_checkpoint_file(path)
    try:
        module = YoloModule(**checkpoint["hyper_parameters"])
    except KeyError as err:
        raise CheckpointError(path, None, f"not a yololab checkpoint: no {err} entry") from None
    except TypeError as err:
        raise CheckpointError(path, None, f"not a yololab checkpoint: {str(err).splitlines()[0]}") from None
    check_weights_fit(checkpoint, module, path, OWN_CFG)
    module.load_state_dict(checkpoint["state_dict"])
    return module


RUN_CFG = "was trained with another cfg or class count than this run's"  # a resume's checkpoint
OWN_CFG = "its weights do not fit the model its cfg describes"  # a checkpoint whose cfg text was changed


def check_weights_fit(checkpoint: dict[str, Any], module: torch.nn.Module, path: str | Path,
                      mismatch: str = RUN_CFG) -> None:
    """CheckpointError naming ``path`` when the checkpoint's weights are not those of ``module`` (a checkpoint
    of another cfg or class count): the keys and shapes of both state dicts must agree. ``mismatch`` starts
    the message, which goes on with what differs (counts and a first example of each kind)."""
    have = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if have == want:
        return
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    reshaped = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    parts = [f"{len(missing)} weights missing (e.g. {missing[0]})"] if missing else []
    parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
    parts += [f"{len(reshaped)} of another shape (e.g. {reshaped[0]}: {have[reshaped[0]]} in the file, "
              f"{want[reshaped[0]]} in the model)"] if reshaped else []
    raise CheckpointError(path, None, f"{mismatch}: " + ", ".join(parts))
