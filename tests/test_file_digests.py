"""The file digest sidecar: an unchanged file is not read again, any change to it is, and a resumed evaluation over
unchanged images decodes none of them yet scores exactly like a fresh run."""

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image
from train_recipes import write_recipe

import evaluate_mmeb
import train
from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common import file_digests
from modeling_vlm2vec.common.file_digests import SIDECAR_NAME, FileDigests
from modeling_vlm2vec.data import images
from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb
from modeling_vlm2vec.evaluation import load_eval_set
from modeling_vlm2vec.processing_vlm2vec import load_backbone_processor


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Counting:
    """A compute function that records the paths it was called for."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, path: Path) -> str:
        self.calls.append(path.name)
        return _sha(path)


@pytest.fixture
def settled_now(monkeypatch):
    # Files written by a test are younger than SETTLED_SECONDS; the rule itself is tested below with its real value.
    monkeypatch.setattr(file_digests, "SETTLED_SECONDS", 0.0)


def _lookup(sidecar: Path, path: Path) -> tuple[str, list[str]]:
    """A fresh process's view: a new store read from the sidecar, one lookup, saved; (digest, computed paths)."""
    compute = _Counting()
    store = FileDigests(sidecar)
    value = store.digest(path, compute, kind="raw")
    store.save()
    return value, compute.calls


def test_an_unchanged_file_is_read_once_across_runs(tmp_path, settled_now):
    file, sidecar = tmp_path / "a.bin", tmp_path / "cache" / SIDECAR_NAME
    file.write_bytes(b"x" * 100)
    assert _lookup(sidecar, file) == (_sha(file), ["a.bin"])
    assert _lookup(sidecar, file) == (_sha(file), [])  # from the sidecar, the file not opened
    assert json.loads(sidecar.read_text())["files"]["raw"][str(file)][-1] == _sha(file)


@pytest.mark.parametrize("change", ["same size, new mtime", "same mtime, new size", "same size and mtime, new bytes"])
def test_a_changed_file_is_read_again(tmp_path, settled_now, change):
    file, sidecar = tmp_path / "a.bin", tmp_path / SIDECAR_NAME
    file.write_bytes(b"x" * 100)
    _lookup(sidecar, file)
    old = file.stat()
    if change == "same size, new mtime":
        os.utime(file, ns=(old.st_atime_ns, old.st_mtime_ns - 10**9))
    else:
        file.write_bytes(b"y" * (101 if change == "same mtime, new size" else 100))
        os.utime(file, ns=(old.st_atime_ns, old.st_mtime_ns))  # the old mtime put back (cp -p, rsync -t)
    assert _lookup(sidecar, file) == (_sha(file), ["a.bin"])
    assert _lookup(sidecar, file) == (_sha(file), [])


def test_a_replaced_file_and_a_retargeted_link_are_read_again(tmp_path, settled_now):
    sidecar = tmp_path / SIDECAR_NAME
    one, two, link = tmp_path / "one.bin", tmp_path / "two.bin", tmp_path / "link.bin"
    one.write_bytes(b"1" * 50)
    two.write_bytes(b"2" * 50)
    link.symlink_to(one)
    assert _lookup(sidecar, link) == (_sha(one), ["link.bin"])
    link.unlink()
    link.symlink_to(two)
    assert _lookup(sidecar, link) == (_sha(two), ["link.bin"])


def test_a_file_changed_just_before_it_was_read_is_not_recorded(tmp_path):
    file, sidecar = tmp_path / "a.bin", tmp_path / SIDECAR_NAME
    file.write_bytes(b"x")  # now: within SETTLED_SECONDS, it could change again within the same timestamp
    assert _lookup(sidecar, file)[1] == ["a.bin"]
    assert _lookup(sidecar, file)[1] == ["a.bin"]
    assert not sidecar.exists()  # nothing recorded, nothing written


def test_kinds_are_kept_apart(tmp_path, settled_now):
    file = tmp_path / "a.bin"
    file.write_bytes(b"x")
    store, compute = FileDigests(), _Counting()
    store.digest(file, compute, kind="raw")
    store.digest(file, compute, kind="image")  # a plain hash never stands in for a decoded-and-valid check
    assert compute.calls == ["a.bin", "a.bin"]


@pytest.mark.parametrize("content", ["{torn", '{"format": "other", "files": {}}', "[1, 2]", '{"format": 1}'])
def test_a_torn_or_foreign_sidecar_is_ignored(tmp_path, settled_now, caplog, content):
    file, sidecar = tmp_path / "a.bin", tmp_path / SIDECAR_NAME
    file.write_bytes(b"x")
    sidecar.write_text(content)
    with caplog.at_level(logging.WARNING):
        assert _lookup(sidecar, file) == (_sha(file), ["a.bin"])
    assert "ignoring the file digest cache" in caplog.text
    assert _lookup(sidecar, file) == (_sha(file), [])  # rewritten as ours


def test_a_forged_entry_for_another_identity_is_not_trusted(tmp_path, settled_now):
    file, sidecar = tmp_path / "a.bin", tmp_path / SIDECAR_NAME
    file.write_bytes(b"x")
    st = file.stat()
    forged = {"raw": {str(file): [st.st_size + 1, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, "0" * 64]}}
    sidecar.write_text(json.dumps({"format": "vlm2vec-file-digests/1", "files": forged}))
    assert _lookup(sidecar, file) == (_sha(file), ["a.bin"])


# --- through evaluate_mmeb.py ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbone_dir):
    root = tmp_path_factory.mktemp("digests")
    raw = tiny_backbone_dir("qwen2_vl")
    checkpoint = root / "vlm2vec-tiny"
    Vlm2VecModel.from_backbone(raw).save_pretrained(checkpoint)
    load_backbone_processor(raw).save_pretrained(checkpoint)
    return {"root": root, "checkpoint": checkpoint}


@pytest.fixture
def counted_decodes(monkeypatch):
    """Paths of the images decoded to be checked (each one's content digest is computed there)."""
    decoded: list[str] = []
    check = images.check_image_bytes

    def counting(data, *, file, **kwargs):
        decoded.append(file)
        return check(data, file=file, **kwargs)

    monkeypatch.setattr(images, "check_image_bytes", counting)
    return decoded


def _evaluate(setup, data, out) -> dict:
    args = ["--model_name_or_path", str(setup["checkpoint"]), "--dataset_name", str(data["eval_root"])]
    args += ["--image_dir", str(data["root"]), "--subset_name", "synthetic", "--output_dir", str(out)]
    assert evaluate_mmeb.main([*args, "--batch_size", "4"]) == 0
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*_score.json"))}


def test_a_resumed_evaluation_decodes_no_unchanged_image_and_a_changed_one_again(
    setup, tmp_path, settled_now, counted_decodes
):
    data = write_synthetic_mmeb(tmp_path / "syn", n_train_per_task=3, n_eval_per_task=4, n_candidates=3)
    out = tmp_path / "run"
    first = _evaluate(setup, data, out)
    referenced = set(counted_decodes)
    assert referenced and len(counted_decodes) == len(referenced)  # each image decoded once, at load
    assert (out / "cache" / SIDECAR_NAME).is_file()

    counted_decodes.clear()
    assert _evaluate(setup, data, out) == first  # resumed: every score file reused
    assert counted_decodes == []  # and not one image decoded to fingerprint it

    touched, replaced = sorted(Path(p) for p in referenced)[:2]
    old = touched.stat()
    os.utime(touched, ns=(old.st_atime_ns, old.st_mtime_ns - 10**9))  # same bytes, new mtime
    old = replaced.stat()
    Image.new("RGB", (37, 23), (250, 10, 10)).save(replaced)  # other pixels (and size), the old mtime put back
    os.utime(replaced, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert replaced.stat().st_size != old.st_size
    counted_decodes.clear()
    resumed = _evaluate(setup, data, out)
    assert sorted(counted_decodes) == sorted([str(touched), str(replaced)])

    fresh = _evaluate(setup, data, tmp_path / "fresh")  # no sidecar, no caches: everything decoded and encoded
    assert resumed.keys() == fresh.keys()
    for name, record in fresh.items():
        for key, value in record.items():
            expected = pytest.approx(value, abs=1e-9) if isinstance(value, float) else value
            assert resumed[name][key] == expected, (name, key)
    assert any(resumed[n]["fingerprint"] != first[n]["fingerprint"] for n in first)  # the new image counted


def test_train_py_does_not_decode_its_unchanged_evaluation_images_again(
    tmp_path, tiny_backbone_dir, settled_now, counted_decodes
):
    data = write_synthetic_mmeb(tmp_path / "syn", n_train_per_task=24, n_eval_per_task=4)
    subsets = ["SynCLS", "SynT2I"]
    sets = [load_eval_set(str(data["eval_root"]), name, str(data["root"])) for name in subsets]
    eval_images = {image for s in sets for _, image in s.queries + s.candidates if image is not None}
    recipe = write_recipe(
        tmp_path,
        tiny_backbone_dir("qwen2_vl"),
        data["data_config"],
        max_steps=1,
        do_eval=True,
        eval_dataset_name=str(data["eval_root"]),
        eval_image_dir=str(data["root"]),
        eval_subset_name=subsets,
    )
    counted_decodes.clear()
    assert train.main([str(recipe)]) == 0
    assert eval_images <= set(counted_decodes)
    sidecar = json.loads((tmp_path / "out" / "eval" / "cache" / SIDECAR_NAME).read_text())
    assert set(sidecar["files"]["image"]) == eval_images
    counted_decodes.clear()
    assert train.main([str(recipe)]) == 0  # a fresh run into the same output_dir: eval/ is set aside, not the checks
    assert not set(counted_decodes) & eval_images
