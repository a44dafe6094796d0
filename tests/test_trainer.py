"""The Trainer subclass: schedule sized in optimizer steps, curriculum by epoch, NaN guard, history."""
import math

import pytest
import torch
from transformers import AutoTokenizer

from nerdistill.annotated import AnnotatedDir
from nerdistill.data import load_training_data
from nerdistill.losses import Curriculum, DistillContext, distillation_loss
from nerdistill.modeling import build_student
from nerdistill.teacher import load_teacher, teacher_forward
from nerdistill.params import Schedule, TrainParams, Weights
from nerdistill.params_reader import params_from_dict
from nerdistill.trainer import DistillTrainer, TrainingDivergedError, train_student, training_arguments
from nerdistill.training_history import epoch_history

TINY = {
    "student": {"num_layers": 2, "teacher_layers": [1, 2], "max_length": 128},
    "teacher": {"max_length": 128, "stride": 32},
    "train": {"batch_size": 8, "warmup_ratio": 0.0, "layer_map": {"teacher": [2], "student": [2]}},
    "distill": {"epochs": 2, "learning_rate": 1e-3, "phase1_epochs": 1},
}


def _setup(teacher_dir, data_dir, overrides=None):
    raw = {**TINY, **(overrides or {})}
    params = params_from_dict(raw)
    teacher, tokenizer = load_teacher(str(teacher_dir))
    data = load_training_data(AnnotatedDir(data_dir), tokenizer, params.student.max_length, params.teacher.stride)
    student = build_student(teacher, data.id2label, list(params.student.teacher_layers), 0.0, provenance={})
    return params, teacher, data, student


def _fit(student, teacher, data, params, checkpoint_dir, weights=None):
    context = _context(student, teacher, data, params)
    if weights is not None:
        context.weights = weights
    return train_student(student, teacher, context, data, params.train, params.distill, params.base.seed,
                         checkpoint_dir, resume=False)


def _context(student, teacher, data, params):
    distill = params.distill
    return DistillContext.build(student.config.id2label, student.config.encoder.num_hidden_layers,
                                teacher.config.id2label, data.transitions, params.train.layer_map.pairs(),
                                params.train.temperature,
                                Curriculum(distill.phase1_epochs, distill.phase1_weights, distill.phase2_weights))


def _subset(data, n_train, n_val):
    data.train, data.val = data.train[:n_train], data.val[:n_val]
    return data


def test_schedule_is_sized_in_optimizer_steps_not_batches(random_teacher_dir, annotated_dir, tmp_path):
    overrides = {"train": {**TINY["train"], "gradient_accumulation_steps": 3}}
    params, teacher, data, student = _setup(random_teacher_dir, annotated_dir, overrides)
    data = _subset(data, 40, 8)  # 5 batches of 8 per epoch -> ceil(5 / 3) = 2 optimizer steps per epoch
    _, result = _fit(student, teacher, data, params, tmp_path / "ckpt")
    assert result.optimizer_steps == 2 * math.ceil(5 / 3)
    # A linear schedule sized in optimizer steps reaches zero exactly at the last one; sized in
    # batches (the seeds' bug) it would stop at 60% of the peak learning rate.
    assert result.final_learning_rate == pytest.approx(0.0, abs=1e-12)


def test_curriculum_weights_follow_the_epoch(random_teacher_dir, annotated_dir, tmp_path):
    params, teacher, data, student = _setup(random_teacher_dir, annotated_dir)
    data = _subset(data, 16, 8)
    seen = []

    def weights(epoch):
        seen.append(epoch)
        return Weights(1.0, 0.5, 0.1, 0.1) if epoch < 1 else Weights(1.0, 1.0, 0.2, 0.2)

    _fit(student, teacher, data, params, tmp_path / "ckpt", weights)
    assert min(seen) < 1.0 <= max(seen)


def test_crf_scores_learn_at_their_own_rate(random_teacher_dir, annotated_dir, tmp_path):
    overrides = {"distill": {**TINY["distill"], "epochs": 1}}
    params, teacher, data, student = _setup(random_teacher_dir, annotated_dir, overrides)
    data = _subset(data, 16, 8)  # 2 optimizer steps
    before = student.crf.transitions.detach().clone()
    best, _ = _fit(student, teacher, data, params, tmp_path / "ckpt")
    # Adam moves a parameter by about its learning rate a step: 2 steps at 1e-3 could not move
    # any score by more than ~0.002; at 1e-3 x crf_lr_multiplier (100) they do.
    assert (best.crf.transitions.detach() - before).abs().max() > 0.05
    assert (best.emissions.weight.detach() - student.emissions.weight.detach()).abs().max() < 0.01


def test_teacher_runs_under_the_trainers_autocast(random_teacher_dir, annotated_dir, tmp_path):
    params, teacher, data, student = _setup(random_teacher_dir, annotated_dir)
    context = _context(student, teacher, data, params)
    batch = data.collator(data.train[:4])
    dtypes = []
    teacher.register_forward_hook(lambda module, args, out: dtypes.append(out.logits.dtype))
    for precision in ("fp32", "bf16"):
        settings = TrainParams(batch_size=4, precision=precision)
        trainer = DistillTrainer(model=student, args=training_arguments(settings, Schedule(), 0, tmp_path / precision),
                                 eval_dataset=data.val, teacher=teacher, context=context, max_nonfinite_steps=0,
                                 crf_lr_multiplier=1.0)
        trainer.compute_loss(student, batch)
    assert dtypes == [torch.float32, torch.bfloat16]


def test_nonfinite_losses_are_skipped_then_stop_training(random_teacher_dir, annotated_dir, tmp_path, monkeypatch):
    overrides = {"train": {**TINY["train"], "max_nonfinite_steps": 1}}
    params, teacher, data, student = _setup(random_teacher_dir, annotated_dir, overrides)
    data = _subset(data, 32, 8)
    with torch.no_grad():
        student.emissions.weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="max_nonfinite_steps=1"):
        _fit(student, teacher, data, params, tmp_path / "ckpt")


def test_epoch_history_groups_logs_by_epoch():
    logs = [
        {"epoch": 0.5, "loss": 2.0, "loss_ce": 1.0, "loss_kd": 0.5, "loss_hidden": 0.2, "loss_crf": 0.1,
         "learning_rate": 1e-3},
        {"epoch": 1.0, "loss": 1.0, "loss_ce": 0.8, "loss_kd": 0.3, "loss_hidden": 0.1, "loss_crf": 0.1,
         "learning_rate": 5e-4},
        {"epoch": 1.0, "eval_loss": 1.2, "eval_f1": 0.5, "eval_precision": 0.4, "eval_recall": 0.6},
        {"epoch": 2.0, "loss": 0.5, "learning_rate": 0.0},
        {"epoch": 2.0, "eval_loss": 0.9, "eval_f1": 0.7, "eval_precision": 0.7, "eval_recall": 0.7},
        {"epoch": 2.0, "train_runtime": 3.0},
    ]
    rows = epoch_history(logs)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[0]["train_loss"] == pytest.approx(1.5) and rows[0]["ce"] == pytest.approx(0.9)
    assert rows[0]["lr"] == 5e-4 and rows[1]["val_f1"] == 0.7
    assert math.isnan(rows[1]["kd"])


@pytest.mark.slow
def test_distill_stage_end_to_end_on_the_demo_teacher(demo_teacher_dir, annotated_dir, tmp_path):
    from nerdistill.stages import distill

    params = params_from_dict({**TINY, "teacher": {"model_name": str(demo_teacher_dir), "max_length": 128,
                                                   "stride": 32},
                               "student": {"num_layers": 3, "teacher_layers": [1, 2, 4], "max_length": 128},
                               "train": {**TINY["train"], "layer_map": {"teacher": [2, 4], "student": [2, 3]}},
                               "distill": {**TINY["distill"], "epochs": 3}})
    out = tmp_path / "student"
    metrics = distill.run(params, data_dir=annotated_dir, out_dir=out, history_csv=tmp_path / "h.csv",
                          components_csv=tmp_path / "c.csv", plot_png=tmp_path / "h.png",
                          checkpoint_dir=tmp_path / "ckpt")
    # Agreement with the teacher after three short epochs; a broken loss or decode stays near 0.
    assert metrics["best_val_f1"] > 0.5
    assert (out / "model.safetensors").is_file()
    assert len(AutoTokenizer.from_pretrained(out)) > 100  # the tokenizer travels with the student
    header, *rows = (tmp_path / "h.csv").read_text().splitlines()
    assert header == "epoch,train_loss,val_loss,val_f1,val_precision,val_recall,lr,pruning_ratio"
    assert len(rows) == metrics["epochs_run"]
    best_row = rows[metrics["best_epoch"] - 1].split(",")
    assert float(best_row[3]) == pytest.approx(metrics["best_val_f1"])
    assert (tmp_path / "c.csv").read_text().startswith(
        "epoch,ce_per_word,kd_per_word_x_T2,hidden_per_subtoken_and_layer_pair,crf_per_transition,total")
    assert (tmp_path / "h.png").stat().st_size > 0


def test_six_layer_teacher_distils_into_four_layers(teacher6_dir, annotated_dir, tmp_path):
    overrides = {"student": {"num_layers": 4, "teacher_layers": [1, 3, 5, 6], "max_length": 128},
                 "train": {**TINY["train"], "layer_map": {"teacher": [3, 6], "student": [2, 4]}},
                 "distill": {**TINY["distill"], "epochs": 1}}
    params, teacher, data, student = _setup(teacher6_dir, annotated_dir, overrides)
    assert student.config.encoder.num_hidden_layers == 4 and student.config.encoder.hidden_size == 48
    data = _subset(data, 16, 8)
    best, result = _fit(student, teacher, data, params, tmp_path / "ckpt")
    assert result.epochs_run == 1 and math.isfinite(result.history[0]["hidden"])


def test_same_seed_same_student(random_teacher_dir, annotated_dir, tmp_path):
    from safetensors.torch import load_file

    from nerdistill.stages import distill

    params = params_from_dict({**TINY, "teacher": {**TINY["teacher"], "model_name": str(random_teacher_dir)},
                               "distill": {**TINY["distill"], "epochs": 1, "max_steps": 3}})
    weights = []
    for run in ("a", "b"):
        distill.run(params, data_dir=annotated_dir, out_dir=tmp_path / run, history_csv=tmp_path / f"{run}.csv",
                    components_csv=tmp_path / f"{run}c.csv", plot_png=tmp_path / f"{run}.png",
                    checkpoint_dir=tmp_path / f"ckpt{run}")
        weights.append(load_file(tmp_path / run / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_batches_group_windows_of_similar_length(random_teacher_dir, annotated_dir, tmp_path):
    params, teacher, data, student = _setup(random_teacher_dir, annotated_dir)
    trainer = DistillTrainer(model=student, args=training_arguments(params.train, params.distill, 0, tmp_path),
                             train_dataset=data.train, eval_dataset=data.val, data_collator=data.collator,
                             teacher=teacher, context=_context(student, teacher, data, params), max_nonfinite_steps=0,
                             crf_lr_multiplier=1.0, group_by_length=True)
    lengths = [len(data.train[i]["input_ids"]) for i in range(len(data.train))]
    order = list(trainer._get_train_sampler())
    assert sorted(order) == list(range(len(lengths)))

    def padded(indices: list[int]) -> int:
        size = params.train.batch_size
        return sum(max(lengths[i] for i in indices[k:k + size]) * len(indices[k:k + size])
                   for k in range(0, len(indices), size))

    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    assert padded(order) < padded(shuffled)


def test_our_part_of_a_training_micro_step_never_reads_the_device(random_teacher_dir, annotated_dir, tmp_path,
                                                                   monkeypatch):
    # The CRF terms, the losses, their logging sums and the non-finite guard stay on the device between
    # logging steps: on a GPU a host read waits for every queued kernel before the next can be queued.
    # (The encoders' own attention-mask check reads the device once per forward: transformers' code.)
    params, teacher, data, student = _setup(random_teacher_dir, annotated_dir)
    context = _context(student, teacher, data, params)
    trainer = DistillTrainer(model=student, args=training_arguments(params.train, params.distill, 0, tmp_path),
                             eval_dataset=data.val, teacher=teacher, context=context, max_nonfinite_steps=0,
                             crf_lr_multiplier=1.0)
    batch = data.collator([data.train[i] for i in range(4)])
    student.train()
    with torch.no_grad():
        teacher_logits, _ = teacher_forward(teacher, batch, output_hidden_states=False)
    outputs = student(**{k: batch[k] for k in ("input_ids", "attention_mask", "word_index", "word_mask")})
    for read in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, read, lambda *args, read=read: pytest.fail(f"host read ({read})"))
    outputs.loss, outputs.marginals = student.crf_terms(outputs.emissions, batch["labels"], batch["word_mask"],
                                                        batch["starts_line"], batch["ends_line"], context.temperature)
    parts = distillation_loss(outputs, teacher_logits, None, batch, Weights(1.0, 1.0, 0.0, 0.1), context)
    trainer._record(parts).backward()
    monkeypatch.undo()
    assert trainer._finite_micro_steps.item() == 1
