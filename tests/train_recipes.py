"""A small `train.py` recipe on a tiny backbone (one place for the settings the end-to-end tests share)."""

from pathlib import Path

import yaml


def write_recipe(tmp_path: Path, backbone: Path, data_config: Path, **overrides) -> Path:
    """Write a 3-step GradCache recipe (CPU, no evaluation, no logging packages) training ``backbone`` on
    ``data_config``, with ``overrides`` applied, as a new YAML file in ``tmp_path``; return its path. The run's
    output folder is ``tmp_path / "out"``."""
    recipe = {
        "output_dir": str(tmp_path / "out"),
        "model_name_or_path": str(backbone),
        "dataset_config": str(data_config),
        "per_device_train_batch_size": 8,
        "gc_q_chunk_size": 3,
        "gc_p_chunk_size": 3,
        "learning_rate": 1e-3,
        "max_steps": 3,
        "save_steps": 100,
        "logging_steps": 1,
        "use_cpu": True,
        "report_to": [],
        "do_eval": False,
        "seed": 0,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    recipe.update(overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
