"""Upload an exported checkpoint to the Hub, and keep Trainer pushes complete.

`push_checkpoint` uploads a folder made by `export_checkpoint` (or a Trainer output folder) without training state:
optimizer, scheduler, RNG states, ``trainer_state.json``, ``training_args.bin``, any pickle, ``checkpoint-*`` folders,
hidden/temporary files and the evaluation embedding cache stay local. `check_push_target` checks the repo id (and,
unless a dry run, that the Hub can be reached with a token) so a command can refuse before writing anything; a failed
upload is one `DataError` saying the folder is complete and how to push it again::

    python -m modeling_vlm2vec.hub.push <folder> <user/name> [--private] [--dry_run]

Trainer integration: `Trainer._push_from_checkpoint` copies only config, weights and adapter files into
``output_dir`` before uploading it (``hub_strategy="every_save"``), and `Trainer.push_to_hub` overwrites
``output_dir/README.md`` with its generic card. `prepare_checkpoint_for_push` copies the remote code, processor files
and our card into ``output_dir``; `HubPushMixin` calls it on every checkpoint push and re-renders our card in place
of the Trainer's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from huggingface_hub import HfApi, constants, create_repo, upload_folder
from huggingface_hub.errors import HFValidationError, LocalTokenNotFoundError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from ..common.cli import run_cli
from ..common.errors import DataError
from ..common.files import read_json
from ..loading import PROCESSOR_FILES, is_vlm2vec_checkpoint
from .card import write_model_card
from .checkpoint import REMOTE_CODE_FILES

# Patterns are matched (fnmatch) against paths relative to the folder.
PUSH_IGNORE_PATTERNS = [
    "optimizer.*",
    "scheduler.*",
    "scaler.*",
    "rng_state*",
    "trainer_state.json",
    "training_args.*",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "checkpoint-*",
    "_*",
    ".*",
    "*/.*",
    "*.tmp",
    "eval/cache/*",
    "runs/*",
]
# Processor / tokenizer files a backbone may write besides PROCESSOR_FILES.
_PROCESSOR_EXTRA = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "video_preprocessor_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
)


def files_to_push(folder: str | os.PathLike) -> list[str]:
    """Relative paths (posix, sorted) that `push_checkpoint` uploads from `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("folder to push does not exist", file=str(folder))
    files = [p.relative_to(folder).as_posix() for p in sorted(folder.glob("**/*")) if p.is_file()]
    return list(filter_repo_objects(files, ignore_patterns=PUSH_IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS))


def check_push_target(repo_id: str, *, token: str | None = None, dry_run: bool = False) -> None:
    """`DataError` unless `repo_id` is a valid model repo id (``name`` or ``namespace/name``) and, unless `dry_run`,
    the Hub can be pushed to: not in offline mode (``HF_HUB_OFFLINE``), reachable, and a token (`token`, ``HF_TOKEN``
    or a saved login) it accepts. Touches the network only without `dry_run` (one ``whoami`` request)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise DataError(f"--hub_model_id {repo_id!r} is not a Hub repo id ({exc})") from None
    if dry_run:
        return
    if constants.HF_HUB_OFFLINE:
        raise DataError(
            "cannot push: the Hub is in offline mode (HF_HUB_OFFLINE=1); unset it, or export without pushing"
        )
    try:
        HfApi().whoami(token=token)
    except LocalTokenNotFoundError:
        raise DataError("cannot push: not logged in to the Hub (run `hf auth login` or set HF_TOKEN)") from None
    except Exception as exc:  # connection errors, HTTP errors (an invalid token is a 401)
        raise DataError(
            f"cannot push: the Hub cannot be reached or refused the token ({type(exc).__name__}: {exc})"
        ) from None


def push_command(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None) -> str:
    """The command line that pushes `folder` to `repo_id` with :func:`push_checkpoint`."""
    parts = [sys.executable, "-m", __name__, str(folder), repo_id] + (["--private"] if private else [])
    return shlex.join(parts)


def push_checkpoint(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    dry_run: bool = False,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload VLM2Vec checkpoint",
) -> list[str]:
    """Upload `folder` to the model repo `repo_id` (created if needed) and return the uploaded relative paths.

    With `dry_run`, nothing touches the network: the list of files that would be uploaded is returned. A failed
    upload raises `DataError` saying that `folder` is complete and how to push it again (:func:`push_command`).
    """
    files = files_to_push(folder)
    if "config.json" not in files and "adapter_config.json" not in files:
        raise DataError("nothing to push: neither config.json nor adapter_config.json", file=str(folder))
    if dry_run:
        return files
    try:
        create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            token=token,
            repo_type="model",
            ignore_patterns=list(PUSH_IGNORE_PATTERNS),
        )
    except Exception as exc:  # network, authentication, quota...: the local folder is complete either way
        reason = " ".join(str(exc).split())  # one line, whatever the library's message
        raise DataError(
            f"the folder {str(folder)!r} is complete, but uploading it to {repo_id!r} failed "
            f"({type(exc).__name__}: {reason}); push it with: {push_command(folder, repo_id, private=private)}"
        ) from exc
    return files


def prepare_checkpoint_for_push(
    checkpoint_dir: str | os.PathLike, output_dir: str | os.PathLike, *, card_context: dict | None = None
) -> list[str]:
    """Copy what a Trainer push leaves out from `checkpoint_dir` into `output_dir`, and write our card there.

    Copies the remote-code ``.py`` files, ``config.json`` and the processor/tokenizer files present in the checkpoint,
    then renders ``README.md`` (for adapter checkpoints the card describes the adapter). Returns the file names written.
    """
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    if not checkpoint_dir.is_dir():
        raise DataError("checkpoint folder does not exist", file=str(checkpoint_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("config.json", *REMOTE_CODE_FILES, *PROCESSOR_FILES, *_PROCESSOR_EXTRA):
        if (checkpoint_dir / name).is_file():
            shutil.copy2(checkpoint_dir / name, output_dir / name)
            written.append(name)
    if (output_dir / "config.json").is_file() and is_vlm2vec_checkpoint(read_json(output_dir / "config.json")):
        write_model_card(output_dir, card_context=card_context)
        written.append("README.md")
    return written


class HubPushMixin:
    """Mix into a `transformers.Trainer` subclass (before `Trainer`) so every Hub push carries code, processor, card.

    The card's training details come from `hub_card_context()`, which subclasses may extend (default: the
    TrainingArguments hyper-parameters, world size, GradCache chunk sizes and LoRA settings).
    """

    def hub_card_context(self) -> dict:
        args = self.args
        training = {
            name: getattr(args, name)
            for name in (
                "learning_rate",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "num_train_epochs",
                "max_steps",
                "warmup_steps",
                "weight_decay",
                "lr_scheduler_type",
                "seed",
                "bf16",
            )
            if getattr(args, name, None) is not None
        }
        context = {"training": training, "world_size": args.world_size}
        grad_cache = {
            name: getattr(args, name) for name in ("gc_q_chunk_size", "gc_p_chunk_size") if getattr(args, name, None)
        }
        if grad_cache:
            context["grad_cache"] = grad_cache
        if args.hub_model_id:
            context["repo_id"] = args.hub_model_id
        peft_config = getattr(self.model, "peft_config", None)
        if peft_config:
            config = next(iter(peft_config.values()))
            context["lora"] = {
                "r": config.r,
                "alpha": config.lora_alpha,
                "dropout": config.lora_dropout,
                "use_dora": config.use_dora,
                "target_modules": config.target_modules,
            }
        return context

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self.is_world_process_zero():
            prepare_checkpoint_for_push(checkpoint_folder, self.args.output_dir, card_context=self.hub_card_context())
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, *args, **kwargs) -> None:
        # Replaces the Trainer's generic card: ours holds the usage snippet, training details and MMEB results.
        if not self.is_world_process_zero():
            return
        output_dir = Path(self.args.output_dir)
        if (output_dir / "config.json").is_file():
            write_model_card(output_dir, card_context=self.hub_card_context())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description="Upload an exported checkpoint.")
    parser.add_argument("folder", help="an export (python -m modeling_vlm2vec.hub.export) or a training output")
    parser.add_argument("repo_id", help="Hub model repo id (user/name)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--dry_run", action="store_true", help="list the files that would be uploaded")
    args = parser.parse_args(argv)

    def body():
        check_push_target(args.repo_id, dry_run=args.dry_run)
        files = push_checkpoint(args.folder, args.repo_id, dry_run=args.dry_run, private=args.private or None)
        print("\n".join(files) if args.dry_run else f"pushed {len(files)} files to {args.repo_id}")

    return run_cli(body)


__all__ = [
    "PUSH_IGNORE_PATTERNS",
    "HubPushMixin",
    "check_push_target",
    "files_to_push",
    "prepare_checkpoint_for_push",
    "push_checkpoint",
    "push_command",
]


if __name__ == "__main__":
    sys.exit(main())
