"""The training state a checkpoint must hold for a resume to continue the run it came from.

transformers' Trainer restores the optimizer, the learning-rate scheduler, the RNG states (one file per process
when several train) and the fp16 gradient scaler only when their files exist; a missing file is skipped and that
state starts fresh with no word in the log (a new Adam moment estimate, the warm-up run again, other dropout masks).
:func:`check_resume_state` looks for every file the Trainer would restore under the current configuration before
any work starts: missing files are an error, unless the recipe sets ``resume_with_missing_state``, in which case each
is named in a warning and the run continues with that state fresh.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from transformers import TrainingArguments

from ..common.errors import DataError

logger = logging.getLogger(__name__)

#: Names under which the Trainer finds optimizer state: ``optimizer.pt``, accelerate's ``optimizer.bin`` (FSDP full
#: state dict) or an ``optimizer_<n>`` folder (FSDP sharded state dict).
_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")


def expected_state_files(args: TrainingArguments) -> list[str]:
    """The state files the Trainer restores on resume for ``args`` (optimizer first), one name per kind; the
    optimizer's is ``optimizer.pt`` standing for any name in :data:`_OPTIMIZER_FILES` or an ``optimizer_<n>``
    folder. DeepSpeed keeps its optimizer in its own checkpoint folder, which its engine checks."""
    files = [] if args.deepspeed else ["optimizer.pt"]
    files.append("scheduler.pt")
    if args.world_size > 1:
        files += [f"rng_state_{rank}.pth" for rank in range(args.world_size)]
    else:
        files.append("rng_state.pth")
    if args.fp16:  # the gradient scaler exists only for fp16 mixed precision
        files.append("scaler.pt")
    return files


def _present(folder: Path, name: str) -> bool:
    if name == "optimizer.pt":
        return any((folder / n).is_file() for n in _OPTIMIZER_FILES) or any(
            p.is_dir() for p in folder.glob("optimizer_*")
        )
    return (folder / name).is_file()


def _check_complete(folder: Path, names: list[str]) -> None:
    # torch.save writes a zip archive whose directory sits at its end: a truncated copy has none. Reading only that
    # directory costs nothing next to loading a multi-GB optimizer state after the model, where it would fail.
    for name in [*names, *_OPTIMIZER_FILES]:
        path = folder / name
        if path.is_file() and not zipfile.is_zipfile(path):
            raise DataError("corrupt or truncated (not a complete torch.save file)", file=str(path))


def check_resume_state(folder: Path, args: TrainingArguments, *, allow_missing: bool) -> list[str]:
    """The state files of :func:`expected_state_files` missing from checkpoint ``folder``.

    Raises `DataError` naming a present state file that is truncated (always), or the first missing file (and the
    others) unless ``allow_missing``; with it, logs a warning naming every missing file and returns them.
    """
    expected = expected_state_files(args)
    _check_complete(folder, expected)
    missing = [name for name in expected if not _present(folder, name)]
    if not missing:
        return []
    what = ", ".join(missing)
    if not allow_missing:
        more = f" (missing too: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise DataError(
            f"the checkpoint has no {missing[0]}{more}: resuming would silently restart that training state "
            "(saved with save_only_model, an incomplete copy, or another number of processes?). Resume from a "
            "complete checkpoint, or set resume_with_missing_state: true to continue with it fresh",
            file=str(folder / missing[0]),
        )
    logger.warning(
        "resuming from %s without %s: resume_with_missing_state is set, so that state starts fresh "
        "(the run will not match an uninterrupted one)",
        folder,
        what,
    )
    return missing


__all__ = ["check_resume_state", "expected_state_files"]
