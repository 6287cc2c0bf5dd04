"""ContrastiveTrainer end to end on CPU: it learns, accumulates gradients exactly, and cached == uncached."""

import pytest
import torch
from PIL import Image
from train_batches import (
    copy_gradients,
    full_batch_loss,
    gradients,
    groups_of,
    loss_of,
    noise_image,
    relative_error,
    single_thread,  # noqa: F401  (autouse fixture)
)
from transformers import TrainerCallback

from modeling_vlm2vec import Vlm2VecModel
from modeling_vlm2vec.data.collator import Vlm2VecCollator, collate_group
from modeling_vlm2vec.data.sampler import GlobalBatchSampler
from modeling_vlm2vec.data.sources import load_corpus
from modeling_vlm2vec.demo.synthetic import write_synthetic_mmeb
from modeling_vlm2vec.training.arguments import ContrastiveTrainingArguments, LoraArguments
from modeling_vlm2vec.training.batching import model_inputs, split_group
from modeling_vlm2vec.training.lora import prepare_trainable_model
from modeling_vlm2vec.training.trainer import ContrastiveTrainer, embed_groups

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]


def solid_image(i: int) -> Image.Image:
    return Image.new("RGB", (40, 32), COLOURS[i])


def toy_rows(n_negatives=(0, 1, 2, 0, 1, 0, 0, 1), image=noise_image):
    """``image(i)`` (noise of seed i by default) as the query -> caption naming colour i (positive); some rows carry
    hard negatives."""
    rows = []
    for i, colour in enumerate(COLOURS):
        negatives = [(f"a {COLOURS[(i + j + 1) % 8]} square", None) for j in range(n_negatives[i])]
        rows.append(
            {
                "query": ("<|image_1|> Represent the given image for classification.", image(i)),
                "positive": (f"a {colour} circle on a white background", None),
                "negatives": negatives,
            }
        )
    return rows


class Collator:
    """Groups processed like the project's collator; remembers every batch it built."""

    def __init__(self, model):
        self.processor, self.batches = model.processor, []

    def _group(self, items):
        return collate_group(self.processor, [t for t, _ in items], [img for _, img in items])

    def __call__(self, rows):
        batch = {
            "query": self._group([r["query"] for r in rows]),
            "positive": self._group([r["positive"] for r in rows]),
        }
        negatives = [n for r in rows for n in r["negatives"]]
        if negatives:
            batch["negative"] = self._group(negatives)
        self.batches.append(batch)
        return batch


class GradientCapture(TrainerCallback):
    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(copy_gradients(model))


def _model(backbone_dir, lora=False):
    model = Vlm2VecModel.from_backbone(backbone_dir)
    torch.manual_seed(0)
    return prepare_trainable_model(model, LoraArguments(lora=lora, lora_r=4, lora_alpha=8, lora_dropout=0.0))


def _args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        per_device_train_batch_size=4,
        learning_rate=2e-3,
        seed=0,
        disable_tqdm=True,
    )
    return ContrastiveTrainingArguments(**{**defaults, **overrides})


@pytest.mark.parametrize("model_type", ["qwen2_vl", "phi3_v"])
def test_training_lowers_the_loss_and_logs_accuracy(tiny_backbone_dir, tmp_path, model_type):
    model = _model(tiny_backbone_dir(model_type))
    args = _args(tmp_path, num_train_epochs=5, gc_q_chunk_size=2, gc_p_chunk_size=3)
    # Phi-3-V's ~760 tokens of an upscaled noise image average out to nearly the same state for every seed at
    # initialisation; solid colours give its images something a short run can tell apart
    rows = toy_rows(image=solid_image if model_type == "phi3_v" else noise_image)
    trainer = ContrastiveTrainer(model=model, args=args, train_dataset=rows, data_collator=Collator(model))
    assert args.remove_unused_columns is False and args.ddp_find_unused_parameters is True
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 10 and all(0.0 <= entry["accuracy"] <= 1.0 for entry in logs)
    first, last = [entry["loss"] for entry in logs[:2]], [entry["loss"] for entry in logs[-2:]]
    assert sum(last) < 0.5 * sum(first)


@pytest.mark.parametrize("cached, lora", [(False, False), (True, False), (True, True)])
def test_accumulated_gradient_is_the_mean_of_micro_batch_gradients(tiny_backbone_dir, tmp_path, cached, lora):
    backbone_dir = tiny_backbone_dir("llava_next")
    model = _model(backbone_dir, lora)
    collator, capture = Collator(model), GradientCapture()
    chunks = dict(gc_q_chunk_size=2, gc_p_chunk_size=2) if cached else {}
    args = _args(
        tmp_path, gradient_accumulation_steps=2, max_steps=1, max_grad_norm=0.0, activation_checkpointing=lora, **chunks
    )
    trainer = ContrastiveTrainer(
        model=model, args=args, train_dataset=toy_rows(), data_collator=collator, callbacks=[capture]
    )
    uncached_calls = []
    compute_loss = trainer.compute_loss
    trainer.compute_loss = lambda *a, **k: uncached_calls.append(1) or compute_loss(*a, **k)
    trainer.train()
    assert len(collator.batches) == 2 and len(capture.grads) == 1
    assert len(uncached_calls) == (0 if cached else 2)
    assert trainer.model.is_activation_checkpointing == lora

    reference_model = _model(backbone_dir, lora).train()
    micro_grads, micro_losses = [], []
    for batch in collator.batches:
        output = full_batch_loss(reference_model, batch)
        output.loss.backward()
        micro_grads.append(gradients(reference_model))
        micro_losses.append(output.loss.item())
    expected = {n: (micro_grads[0][n] + micro_grads[1][n]) / 2 for n in micro_grads[0]}
    assert relative_error(capture.grads[0], expected) <= 1e-5
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert logged == pytest.approx(sum(micro_losses) / 2, rel=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_loss_options_in_the_config_drive_the_trainer_loss(tiny_backbone_dir, tmp_path, cached):
    backbone_dir = tiny_backbone_dir("llava_next")
    options = {"matryoshka_dimensions": [16, 32], "hardness_alpha": 5.0, "false_negative_margin": 0.02}
    model = _model(backbone_dir)
    model.config.apply_overrides(options)
    collator, capture = Collator(model), GradientCapture()
    chunks = dict(gc_q_chunk_size=2, gc_p_chunk_size=2) if cached else {}
    args = _args(tmp_path, max_steps=1, max_grad_norm=0.0, **chunks)
    trainer = ContrastiveTrainer(
        model=model, args=args, train_dataset=toy_rows(), data_collator=collator, callbacks=[capture]
    )
    trainer.train()

    reference_model = _model(backbone_dir).train()
    batch = collator.batches[0]
    loss_options = dict(matryoshka_dims=[16, 32, 64], hardness_alpha=5.0, false_negative_margin=0.02)
    expected = full_batch_loss(reference_model, batch, **loss_options)
    expected.loss.backward()
    assert relative_error(capture.grads[0], gradients(reference_model)) <= 1e-5
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert logged == pytest.approx(expected.loss.item(), rel=1e-5)
    with torch.no_grad():  # each option changes the loss: the trainer really applied all three
        for name in loss_options:
            without = {k: v for k, v in loss_options.items() if k != name}
            assert abs(full_batch_loss(reference_model, batch, **without).loss.item() - logged) > 1e-4, name


@pytest.mark.parametrize("model_type", ["llava_next", "qwen2_vl", "phi3_v"])
def test_embed_groups_in_one_forward_or_one_per_group_equals_row_by_row(tiny_backbone_dir, model_type):
    model = Vlm2VecModel.from_backbone(tiny_backbone_dir(model_type)).eval()
    groups = groups_of(Collator(model)(toy_rows()))
    with torch.no_grad():
        expected = {
            name: torch.cat([model(**model_inputs(row)).embeddings for row in split_group(group, 1)])
            for name, group in groups.items()
        }  # every row alone, no padding at all
    pad_token_id = model.config.get_text_config().pad_token_id or 0
    grads = []
    for one_forward in (False, True):
        embeddings = embed_groups(
            model, groups, one_forward=one_forward, padding_side=model.config.padding_side, pad_token_id=pad_token_id
        )
        assert list(embeddings) == list(groups)
        for name in groups:
            torch.testing.assert_close(embeddings[name].detach(), expected[name], rtol=1e-4, atol=1e-5)
        loss_of(embeddings).loss.backward()
        grads.append(gradients(model))
    assert relative_error(grads[1], grads[0]) <= 1e-5


def test_uncached_step_in_one_process_runs_one_forward_per_group(tiny_backbone_dir, tmp_path):
    model = _model(tiny_backbone_dir("llava_next"))
    collator = Collator(model)
    batch = collator(toy_rows())
    trainer = ContrastiveTrainer(model=model, args=_args(tmp_path), data_collator=collator)
    shapes = []
    model.register_forward_hook(
        lambda module, args, kwargs, out: shapes.append(tuple(kwargs["attention_mask"].shape)), with_kwargs=True
    )
    loss = trainer.compute_loss(model.train(), batch)
    assert shapes == [tuple(group["attention_mask"].shape) for group in groups_of(batch).values()]
    assert loss.item() == pytest.approx(full_batch_loss(model, batch).loss.item(), rel=1e-5)


def test_eval_loss_and_accuracy(tiny_backbone_dir, tmp_path):
    model = _model(tiny_backbone_dir("qwen2_vl"))
    collator = Collator(model)
    args = _args(tmp_path, per_device_eval_batch_size=8)
    trainer = ContrastiveTrainer(model=model, args=args, eval_dataset=toy_rows(), data_collator=collator)
    metrics = trainer.evaluate()
    with torch.no_grad():
        expected = full_batch_loss(model.eval(), collator.batches[-1])
    assert metrics["eval_loss"] == pytest.approx(expected.loss.item(), rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(expected.accuracy.item())


class RowRecorder(Vlm2VecCollator):
    """The project's collator, remembering which corpus rows each batch held."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows = []

    def __call__(self, examples):
        self.rows.append([(e["source"], e["row"]) for e in examples])
        return super().__call__(examples)


def test_corpus_uses_the_global_batch_sampler_and_resumes_in_order(tiny_backbone_dir, tmp_path):
    data = write_synthetic_mmeb(tmp_path / "data", n_train_per_task=6, n_eval_per_task=1, image_size=16)
    corpus = load_corpus(data["data_config"])
    backbone_dir = tiny_backbone_dir("qwen2_vl")

    def run(max_steps, output, resume=None):
        model = _model(backbone_dir)
        collator = RowRecorder(model.processor)
        args = _args(
            output,
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=2,
            seed=3,
            gc_q_chunk_size=2,
            gc_p_chunk_size=2,
        )
        trainer = ContrastiveTrainer(model=model, args=args, train_dataset=corpus, data_collator=collator)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, collator.rows

    trainer, full_rows = run(4, tmp_path / "full")
    loader = trainer.get_train_dataloader()
    assert isinstance(loader.batch_sampler, GlobalBatchSampler)  # not re-sharded or dispatched by accelerate
    sampler = GlobalBatchSampler(corpus.sizes, global_batch_size=4, seed=3, weights=corpus.weights)
    expected = [[(corpus[i]["source"], corpus[i]["row"]) for i in batch] for batch in list(sampler)[:4]]
    assert full_rows == expected

    _, first_rows = run(2, tmp_path / "resumed")
    _, resumed_rows = run(4, tmp_path / "resumed", resume=str(tmp_path / "resumed" / "checkpoint-2"))
    assert first_rows + resumed_rows == full_rows
