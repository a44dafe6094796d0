"""The typed params: one frozen dataclass per params.yaml section, each validating its own keys.

Validation happens once (params_reader builds these from YAML): an out-of-range value stops with
a message naming the key and what is allowed, before any stage does work.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ParamsError(ValueError):
    """A problem in params.yaml, with the offending key in the message."""


@dataclass(frozen=True)
class BaseParams:
    seed: int = 42

    def validate(self, key: str) -> None:
        _check(self.seed >= 0, f"{key}.seed", self.seed, "an integer >= 0")


@dataclass(frozen=True)
class TeacherParams:
    model_name: str = "Jean-Baptiste/camembert-ner"
    max_length: int = 512
    stride: int = 128
    batch_size: int = 32

    def validate(self, key: str) -> None:
        _check(bool(self.model_name.strip()), f"{key}.model_name", self.model_name,
               "a hub id such as Jean-Baptiste/camembert-ner or a local model folder")
        _check(self.max_length >= 8, f"{key}.max_length", self.max_length, "an integer >= 8")
        _check(0 <= self.stride < self.max_length // 2, f"{key}.stride", self.stride,
               f"an integer in [0, max_length/2) = [0, {self.max_length // 2})")
        _check(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "an integer >= 1")


@dataclass(frozen=True)
class SplitRatios:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def validate(self, key: str) -> None:
        for name in ("train", "val", "test"):
            value = getattr(self, name)
            _check(0.0 < value < 1.0, f"{key}.{name}", value, "a fraction in (0, 1)")
        total = self.train + self.val + self.test
        _check(abs(total - 1.0) < 1e-6, key, total, "train + val + test = 1.0")


@dataclass(frozen=True)
class AnnotateParams:
    drop_types: tuple[str, ...] = ("MISC",)
    split: SplitRatios = field(default_factory=SplitRatios)
    max_line_chars: int = 100_000
    max_skipped_fraction: float = 0.05

    def validate(self, key: str) -> None:
        self.split.validate(f"{key}.split")
        _check(self.max_line_chars >= 1, f"{key}.max_line_chars", self.max_line_chars, "an integer >= 1")
        _check(0.0 <= self.max_skipped_fraction <= 1.0, f"{key}.max_skipped_fraction",
               self.max_skipped_fraction, "a fraction in [0, 1]")


@dataclass(frozen=True)
class StudentParams:
    num_layers: int = 10
    teacher_layers: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 8, 9, 10, 12)
    dropout: float = 0.1
    max_length: int = 512
    vocab: Literal["full", "corpus"] = "full"

    def validate(self, key: str) -> None:
        _check(self.num_layers >= 1, f"{key}.num_layers", self.num_layers, "an integer >= 1")
        _check(len(self.teacher_layers) == self.num_layers, f"{key}.teacher_layers", list(self.teacher_layers),
               f"exactly num_layers={self.num_layers} teacher layer numbers (1-based)")
        _check(all(layer >= 1 for layer in self.teacher_layers)
               and list(self.teacher_layers) == sorted(set(self.teacher_layers)),
               f"{key}.teacher_layers", list(self.teacher_layers), "distinct increasing 1-based layer numbers")
        _check(0.0 <= self.dropout < 1.0, f"{key}.dropout", self.dropout, "a probability in [0, 1)")
        _check(self.max_length >= 8, f"{key}.max_length", self.max_length, "an integer >= 8")
        _check(self.vocab in ("full", "corpus"), f"{key}.vocab", self.vocab,
               "full (the teacher's vocabulary) or corpus (only the sub-tokens the annotated corpus uses)")


@dataclass(frozen=True)
class LayerMap:
    teacher: tuple[int, ...] = (2, 4, 6, 8, 10, 12)
    student: tuple[int, ...] = (2, 3, 5, 7, 9, 10)

    def validate(self, key: str) -> None:
        _check(len(self.teacher) == len(self.student) and len(self.teacher) > 0, key,
               {"teacher": list(self.teacher), "student": list(self.student)},
               "two non-empty lists of the same length (1-based layer numbers)")
        _check(all(layer >= 1 for layer in self.teacher + self.student), key,
               {"teacher": list(self.teacher), "student": list(self.student)}, "1-based layer numbers")

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.teacher, self.student))


class Weights(typing.NamedTuple):
    """Loss weights, in params.yaml as a list [ce, kd, hidden, crf]."""
    ce: float
    kd: float
    hidden: float
    crf: float


@dataclass(frozen=True)
class DistillParams:
    epochs: int = 10
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    # prior: the CRF starts from the teacher's transition prior (transitions.json); uniform: from
    # pytorch-crf's +-0.1 init, which the CRF loss (the fourth weight) then has something to pull.
    crf_init: Literal["prior", "uniform"] = "prior"
    # The CRF's few scores learn at learning_rate x this (Adam moves each parameter about lr a step).
    crf_lr_multiplier: float = 100.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    temperature: float = 2.5
    phase1_epochs: int = 1
    phase1_weights: Weights = Weights(1.0, 0.5, 0.0, 0.0)
    phase2_weights: Weights = Weights(1.0, 1.0, 0.0, 0.0)
    layer_map: LayerMap = field(default_factory=LayerMap)
    early_stopping_patience: int = 3
    early_stopping_threshold: float = 0.001
    save_total_limit: int = 2
    max_nonfinite_steps: int = 20
    max_steps: int = -1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def validate(self, key: str) -> None:
        _check_training(self, key)
        _check(self.temperature > 0, f"{key}.temperature", self.temperature, "a number > 0")
        _check(self.crf_lr_multiplier > 0 and self.learning_rate * self.crf_lr_multiplier < 1,
               f"{key}.crf_lr_multiplier", self.crf_lr_multiplier,
               f"a number > 0 whose product with {key}.learning_rate is < 1")
        _check(self.phase1_epochs >= 0, f"{key}.phase1_epochs", self.phase1_epochs, "an integer >= 0")
        for name in ("phase1_weights", "phase2_weights"):
            _check_weights(getattr(self, name), f"{key}.{name}")
        self.layer_map.validate(f"{key}.layer_map")
        _check(self.early_stopping_patience >= 1, f"{key}.early_stopping_patience",
               self.early_stopping_patience, "an integer >= 1")
        _check(self.early_stopping_threshold >= 0, f"{key}.early_stopping_threshold",
               self.early_stopping_threshold, "a number >= 0")
        _check(self.save_total_limit >= 1, f"{key}.save_total_limit", self.save_total_limit, "an integer >= 1")
        _check(self.max_nonfinite_steps >= 0, f"{key}.max_nonfinite_steps", self.max_nonfinite_steps,
               "an integer >= 0")
        _check(self.gradient_accumulation_steps >= 1, f"{key}.gradient_accumulation_steps",
               self.gradient_accumulation_steps, "an integer >= 1")
        _check(0.0 <= self.warmup_ratio < 1.0, f"{key}.warmup_ratio", self.warmup_ratio, "a fraction in [0, 1)")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.max_grad_norm > 0, f"{key}.max_grad_norm", self.max_grad_norm, "a number > 0")


@dataclass(frozen=True)
class PruningParams:
    ratio: float = 0.25
    ffn_ratio: float = 0.5
    scope: Literal["per_layer", "global"] = "per_layer"
    num_batches: int = 32
    batch_size: int = 16

    def validate(self, key: str) -> None:
        _check(0.0 <= self.ratio < 1.0, f"{key}.ratio", self.ratio, "a fraction in [0, 1)")
        _check(0.0 <= self.ffn_ratio < 1.0, f"{key}.ffn_ratio", self.ffn_ratio,
               "a fraction in [0, 1); 0 leaves the FFN layers whole")
        _check(self.num_batches >= 1, f"{key}.num_batches", self.num_batches, "an integer >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "an integer >= 1")


@dataclass(frozen=True)
class FinetuneParams:
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 2e-5
    weights: Weights = Weights(1.0, 0.8, 0.0, 0.0)
    max_steps: int = -1

    def validate(self, key: str) -> None:
        _check_training(self, key)
        _check_weights(self.weights, f"{key}.weights")


@dataclass(frozen=True)
class ExportParams:
    per_channel: bool = True
    quantize_embeddings: bool = True

    def validate(self, key: str) -> None:
        """Two booleans, typed by params_reader: nothing out of range."""


@dataclass(frozen=True)
class EvaluateParams:
    gold_path: str = ""
    batch_size: int = 32
    error_samples: int = 50

    def validate(self, key: str) -> None:
        if self.gold_path:
            _check(Path(self.gold_path).is_file(), f"{key}.gold_path", self.gold_path,
                   "an existing CoNLL file, or \"\" for no gold set")
        _check(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "an integer >= 1")
        _check(self.error_samples >= 0, f"{key}.error_samples", self.error_samples, "an integer >= 0")


@dataclass(frozen=True)
class BenchParams:
    doc_tokens: int = 350
    warmup: int = 3
    repeats: int = 20
    batch_size: int = 32
    threads: int = 2
    int8: bool = True

    def validate(self, key: str) -> None:
        for name in ("doc_tokens", "repeats", "batch_size", "threads"):
            value = getattr(self, name)
            _check(value >= 1, f"{key}.{name}", value, "an integer >= 1")
        _check(self.warmup >= 0, f"{key}.warmup", self.warmup, "an integer >= 0")


@dataclass(frozen=True)
class GateParams:
    max_f1_drop: float = 1.0
    max_agreement_drop: float = 5.0
    min_f1: float = 0.5
    go_latency_ms: float = 200.0
    nogo_latency_ms: float = 300.0
    max_memory_mb: float = 4096.0
    fail_on_nogo: bool = False
    variant: str = "onnx_int8"

    def validate(self, key: str) -> None:
        _check(self.max_f1_drop >= 0, f"{key}.max_f1_drop", self.max_f1_drop, "points of F1 >= 0")
        _check(0 <= self.max_agreement_drop <= 100, f"{key}.max_agreement_drop", self.max_agreement_drop,
               "points of agreement F1 in [0, 100]")
        _check(0 <= self.min_f1 <= 1, f"{key}.min_f1", self.min_f1, "an F1 in [0, 1]")
        _check(0 < self.go_latency_ms <= self.nogo_latency_ms, f"{key}.go_latency_ms", self.go_latency_ms,
               f"a latency > 0 and <= gate.nogo_latency_ms ({self.nogo_latency_ms})")
        _check(self.max_memory_mb > 0, f"{key}.max_memory_mb", self.max_memory_mb, "a number of MB > 0")
        model, sep, variant = self.variant.partition(":")
        _check(bool(model.strip()) and ":" not in variant and (not sep or bool(variant.strip())), f"{key}.variant",
               self.variant, "MODEL or MODEL:VARIANT, a --model name of bench (e.g. onnx_int8, final:cpu_int8)")

    def judged(self) -> tuple[str, str | None]:
        """(model, variant) that `variant` names; the variant is None when left to the model's kind."""
        model, _, variant = self.variant.partition(":")
        return model, variant or None


@dataclass(frozen=True)
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    teacher: TeacherParams = field(default_factory=TeacherParams)
    annotate: AnnotateParams = field(default_factory=AnnotateParams)
    student: StudentParams = field(default_factory=StudentParams)
    distill: DistillParams = field(default_factory=DistillParams)
    pruning: PruningParams = field(default_factory=PruningParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    export: ExportParams = field(default_factory=ExportParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    bench: BenchParams = field(default_factory=BenchParams)
    gate: GateParams = field(default_factory=GateParams)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        layer_map = self.distill.layer_map
        _check(max(layer_map.student) <= self.student.num_layers, "distill.layer_map.student",
               list(layer_map.student), f"student layer numbers <= student.num_layers={self.student.num_layers}")

    def training(self, stage: Literal["distill", "finetune"]) -> DistillParams:
        """The training knobs of `stage`: distill's section, where finetune brings its own epochs,
        batch size, learning rate and step cap (the rest is shared, so one Trainer setup serves both)."""
        if stage == "distill":
            return self.distill
        f = self.finetune
        return dataclasses.replace(self.distill, epochs=f.epochs, batch_size=f.batch_size,
                                   learning_rate=f.learning_rate, max_steps=f.max_steps)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key` -> value, the form MLflow params and `dvc exp run -S` use."""
        return dict(_flatten(self.as_dict()))

    def select(self, keys: typing.Iterable[str]) -> dict[str, Any]:
        """The flat params under `keys`, each a section (`teacher`) or a dotted key (`base.seed`)."""
        prefixes = tuple(keys)
        return {name: value for name, value in self.flat().items()
                if any(name == key or name.startswith(f"{key}.") for key in prefixes)}


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamsError(f"{key} = {value!r} is out of range; allowed: {allowed}")


def _check_training(section: Any, key: str) -> None:
    _check(section.epochs >= 1, f"{key}.epochs", section.epochs, "an integer >= 1")
    _check(section.batch_size >= 1, f"{key}.batch_size", section.batch_size, "an integer >= 1")
    _check(0 < section.learning_rate < 1, f"{key}.learning_rate", section.learning_rate, "a number in (0, 1)")
    _check(section.max_steps == -1 or section.max_steps >= 1, f"{key}.max_steps", section.max_steps,
           "-1 (train all epochs) or an integer >= 1")


def _check_weights(weights: Weights, key: str) -> None:
    _check(all(w >= 0 for w in weights) and weights.ce > 0, key, list(weights),
           "four weights [ce, kd, hidden, crf], all >= 0, ce > 0")


def _flatten(tree: dict[str, Any], prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{key}.")
        else:
            yield key, list(value) if isinstance(value, tuple) else value
