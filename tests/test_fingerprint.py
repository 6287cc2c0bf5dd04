"""The model fingerprint covers every weight byte of the model as it is in memory: a change off the old strided
sample, a change made after loading (through ``.data``, as peft's merge does), a dtype change and randomly
initialised weights all change it; the same weights saved and loaded again keep it."""

import hashlib
import re
from pathlib import Path

import pytest
import torch

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.common.fingerprint import model_fingerprint, tensor_digest, weights_digest
from modeling_vlm2vec.loading import load_vlm2vec
from modeling_vlm2vec.processing_vlm2vec import load_backbone_processor


def _strided_sample_digest(model: torch.nn.Module, samples: int = 4096) -> str:
    """The previous fingerprint's weight part, re-implemented: up to ``samples`` evenly spaced values per tensor."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[::step][:samples].float().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_backbone_dir):
    raw = tiny_backbone_dir("qwen2_vl")
    folder = tmp_path_factory.mktemp("fp") / "vlm2vec-tiny"
    Vlm2VecModel.from_backbone(raw).save_pretrained(folder)
    load_backbone_processor(raw).save_pretrained(folder)
    return folder


def _large_parameter(model: torch.nn.Module) -> tuple[str, torch.nn.Parameter]:
    name, param = max(model.named_parameters(), key=lambda item: item[1].numel())
    assert param.numel() // 4096 >= 2, "the test needs a tensor the old sample strides over"
    return name, param


def test_a_change_off_the_old_sample_changes_the_fingerprint(checkpoint):
    model = load_vlm2vec(checkpoint)
    before, sampled_before = model_fingerprint(model), _strided_sample_digest(model)
    _, param = _large_parameter(model)
    with torch.no_grad():
        param.view(-1)[1] += 1.0  # index 1 lies between samples 0 and `step`
    assert _strided_sample_digest(model) == sampled_before  # the old fingerprint could not see it
    assert model_fingerprint(model) != before


def test_a_change_through_data_after_loading_changes_the_fingerprint(checkpoint):
    model = load_vlm2vec(checkpoint)
    before = model_fingerprint(model)
    _, param = _large_parameter(model)
    version = param._version
    param.data.view(-1)[-1] += 0.5  # as peft merges LoRA weights: no version counter moves
    assert param._version == version
    assert model_fingerprint(model) != before


def test_same_weights_saved_and_loaded_keep_the_fingerprint_and_other_weights_do_not(checkpoint, tmp_path):
    loaded = load_vlm2vec(checkpoint)
    in_memory = load_vlm2vec(checkpoint)
    with torch.no_grad():
        for p in in_memory.parameters():
            p.mul_(1.5)  # an in-memory model (e.g. trained) that is not what the files hold
    assert model_fingerprint(in_memory) != model_fingerprint(loaded)
    in_memory.save_pretrained(tmp_path / "saved")
    load_backbone_processor(checkpoint).save_pretrained(tmp_path / "saved")
    assert model_fingerprint(load_vlm2vec(tmp_path / "saved")) == model_fingerprint(in_memory)


def test_dtype_and_random_initialisation_count(checkpoint):
    model = load_vlm2vec(checkpoint)
    assert model_fingerprint(load_vlm2vec(checkpoint, dtype="bfloat16")) != model_fingerprint(model)
    # two models built from the same config with random weights are two models
    config = model.config
    torch.manual_seed(0)
    first = Vlm2VecModel(config)
    torch.manual_seed(1)
    second = Vlm2VecModel(config)
    assert weights_digest(first) != weights_digest(second)
    torch.manual_seed(0)
    assert weights_digest(Vlm2VecModel(config)) == weights_digest(first)


def test_the_weights_digest_is_an_independent_hash_of_every_tensor(checkpoint):
    model = load_vlm2vec(checkpoint)
    state = model.state_dict()
    lines = []
    for name, tensor in state.items():  # an independent serialisation: numpy bytes of each tensor
        raw = tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        lines.append(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:{hashlib.sha256(raw).hexdigest()}\n")
    assert weights_digest(model) == hashlib.sha256("".join(lines).encode()).hexdigest()
    bf16 = torch.arange(10, dtype=torch.bfloat16)
    assert tensor_digest(bf16) == hashlib.sha256(bf16.view(torch.int16).numpy().tobytes()).hexdigest()
    assert tensor_digest(torch.ones(3, 4).t()) == tensor_digest(torch.ones(4, 3))  # row-major, strides ignored


def test_the_documented_snippet_runs():
    page = (Path(__file__).resolve().parents[1] / "docs" / "resume-and-caches.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    exec(compile(snippet, "docs/resume-and-caches.md", "exec"), {})
