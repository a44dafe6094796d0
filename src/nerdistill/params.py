"""The typed params: one frozen dataclass per params.yaml section, each validating its own keys once
(params_reader builds them from YAML), before any stage does work; errors name the key and what is allowed."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal


class ParamsError(ValueError):
    """A problem in params.yaml, with the offending key in the message."""


class Section:
    """A params.yaml section: `minimums` bounds its counts and sizes, `check` holds its other rules."""
    minimums: typing.ClassVar[dict[str, int]] = {}

    def validate(self, key: str) -> None:
        for name, hint in typing.get_type_hints(type(self)).items():
            if typing.get_origin(hint) is Literal:
                allowed = typing.get_args(hint)
                _check(getattr(self, name) in allowed, f"{key}.{name}", getattr(self, name), " or ".join(allowed))
        for name, minimum in self.minimums.items():
            value = getattr(self, name)
            _check(value >= minimum, f"{key}.{name}", value,
                   f"{'an integer' if isinstance(value, int) else 'a number'} >= {minimum}")
        self.check(key)

    def check(self, key: str) -> None:
        """Rules beyond `minimums`."""


@dataclass(frozen=True)
class BaseParams(Section):
    seed: int = 42
    minimums = {"seed": 0}


@dataclass(frozen=True)
class TeacherParams(Section):
    model_name: str = "Jean-Baptiste/camembert-ner"
    max_length: int = 512
    stride: int = 128
    batch_size: int = 32
    minimums = {"max_length": 8, "batch_size": 1}

    def check(self, key: str) -> None:
        _check(bool(self.model_name.strip()), f"{key}.model_name", self.model_name,
               "a hub id such as Jean-Baptiste/camembert-ner or a local model folder")
        _check(0 <= self.stride < self.max_length // 2, f"{key}.stride", self.stride,
               f"an integer in [0, max_length/2) = [0, {self.max_length // 2})")


@dataclass(frozen=True)
class SplitRatios(Section):
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def check(self, key: str) -> None:
        for name, value in (("train", self.train), ("val", self.val), ("test", self.test)):
            _check(0.0 < value < 1.0, f"{key}.{name}", value, "a fraction in (0, 1)")
        _check(abs((total := self.train + self.val + self.test) - 1.0) < 1e-6, key, total, "a sum of 1.0")


@dataclass(frozen=True)
class AnnotateParams(Section):
    drop_types: tuple[str, ...] = ("MISC",)
    split: SplitRatios = field(default_factory=SplitRatios)
    max_line_chars: int = 100_000
    max_skipped_fraction: float = 0.05
    minimums = {"max_line_chars": 1}

    def check(self, key: str) -> None:
        self.split.validate(f"{key}.split")
        _check(0.0 <= self.max_skipped_fraction <= 1.0, f"{key}.max_skipped_fraction",
               self.max_skipped_fraction, "a fraction in [0, 1]")


@dataclass(frozen=True)
class StudentParams(Section):
    num_layers: int = 10
    teacher_layers: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 8, 9, 10, 12)
    dropout: float = 0.1
    max_length: int = 512
    vocab: Literal["full", "corpus"] = "full"
    minimums = {"num_layers": 1, "max_length": 8}

    def check(self, key: str) -> None:
        layers = list(self.teacher_layers)
        _check(len(layers) == self.num_layers and min(layers) >= 1 and layers == sorted(set(layers)),
               f"{key}.teacher_layers", layers, f"{self.num_layers} distinct increasing 1-based layer numbers")
        _check(0.0 <= self.dropout < 1.0, f"{key}.dropout", self.dropout, "a probability in [0, 1)")


@dataclass(frozen=True)
class LayerMap(Section):
    teacher: tuple[int, ...] = (2, 4, 6, 8, 10, 12)
    student: tuple[int, ...] = (2, 3, 5, 7, 9, 10)

    def check(self, key: str) -> None:
        _check(len(self.teacher) == len(self.student) > 0 and min(self.teacher + self.student) >= 1, key,
               {"teacher": list(self.teacher), "student": list(self.student)},
               "two non-empty lists of the same length of 1-based layer numbers")

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.teacher, self.student))


class Weights(typing.NamedTuple):
    """Loss weights, in params.yaml as a list [ce, kd, hidden, crf]."""
    ce: float
    kd: float
    hidden: float
    crf: float


@dataclass(frozen=True)
class TrainParams(Section):
    """What distill and finetune share: one Trainer setup, one loss definition (temperature, layer pairs)."""
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    crf_lr_multiplier: float = 100.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    temperature: float = 2.5
    layer_map: LayerMap = field(default_factory=LayerMap)
    early_stopping_patience: int = 3
    early_stopping_threshold: float = 0.001
    save_total_limit: int = 2
    max_nonfinite_steps: int = 20
    group_by_length: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    minimums = {"batch_size": 1, "gradient_accumulation_steps": 1, "early_stopping_patience": 1,
                "save_total_limit": 1, "weight_decay": 0, "early_stopping_threshold": 0, "max_nonfinite_steps": 0}

    def check(self, key: str) -> None:
        for name in ("crf_lr_multiplier", "max_grad_norm", "temperature"):
            _check(getattr(self, name) > 0, f"{key}.{name}", getattr(self, name), "a number > 0")
        _check(0.0 <= self.warmup_ratio < 1.0, f"{key}.warmup_ratio", self.warmup_ratio, "a fraction in [0, 1)")
        self.layer_map.validate(f"{key}.layer_map")


@dataclass(frozen=True)
class Schedule(Section):
    """A training stage's own length and pace; the rest of its Trainer setup is `train:`."""
    epochs: int = 2
    learning_rate: float = 2e-5
    max_steps: int = -1
    minimums = {"epochs": 1}

    def check(self, key: str) -> None:
        _check(0 < self.learning_rate < 1, f"{key}.learning_rate", self.learning_rate, "a number in (0, 1)")
        _check(self.max_steps == -1 or self.max_steps >= 1, f"{key}.max_steps", self.max_steps,
               "-1 (train all epochs) or an integer >= 1")


@dataclass(frozen=True)
class DistillParams(Schedule):
    epochs: int = 10
    crf_init: Literal["prior", "uniform"] = "prior"
    phase1_epochs: int = 1
    phase1_weights: Weights = Weights(1.0, 0.5, 0.0, 0.0)
    phase2_weights: Weights = Weights(1.0, 1.0, 0.0, 0.0)
    minimums = {"epochs": 1, "phase1_epochs": 0}

    def check(self, key: str) -> None:
        super().check(key)
        for name in ("phase1_weights", "phase2_weights"):
            _check_weights(getattr(self, name), f"{key}.{name}")


@dataclass(frozen=True)
class PruningParams(Section):
    ratio: float = 0.25
    ffn_ratio: float = 0.5
    scope: Literal["per_layer", "global"] = "per_layer"
    num_batches: int = 32
    batch_size: int = 16
    minimums = {"num_batches": 1, "batch_size": 1}

    def check(self, key: str) -> None:
        _check(0.0 <= self.ratio < 1.0, f"{key}.ratio", self.ratio, "a fraction in [0, 1)")
        _check(0.0 <= self.ffn_ratio < 1.0, f"{key}.ffn_ratio", self.ffn_ratio,
               "a fraction in [0, 1); 0 leaves the FFN layers whole")


@dataclass(frozen=True)
class FinetuneParams(Schedule):
    weights: Weights = Weights(1.0, 0.8, 0.0, 0.0)

    def check(self, key: str) -> None:
        super().check(key)
        _check_weights(self.weights, f"{key}.weights")


@dataclass(frozen=True)
class ExportParams(Section):
    per_channel: bool = True
    quantize_embeddings: bool = True


@dataclass(frozen=True)
class EvaluateParams(Section):
    gold_path: str = ""
    batch_size: int = 32
    error_samples: int = 50
    minimums = {"batch_size": 1, "error_samples": 0}

    def check(self, key: str) -> None:
        _check(not self.gold_path or Path(self.gold_path).is_file(), f"{key}.gold_path", self.gold_path,
               "an existing CoNLL file, or \"\" for no gold set")


@dataclass(frozen=True)
class BenchParams(Section):
    doc_tokens: int = 350
    warmup: int = 3
    repeats: int = 20
    batch_size: int = 32
    threads: int = 2
    int8: bool = True
    max_spread: float = 2.0
    max_retries: int = 2
    minimums = {"doc_tokens": 1, "warmup": 0, "repeats": 1, "batch_size": 1, "threads": 1, "max_spread": 1,
                "max_retries": 0}


@dataclass(frozen=True)
class GateParams(Section):
    max_f1_drop: float = 1.0
    max_class_f1_drop: float = 2.0
    max_agreement_drop: float = 5.0
    min_f1: float = 0.5
    go_latency_ms: float = 200.0
    nogo_latency_ms: float = 300.0
    max_memory_mb: float = 4096.0
    max_latency_ratio_vs_teacher_int8: float = 0.6
    min_export_fidelity: float = 0.99
    fail_on_nogo: bool = False
    variant: str = "onnx_int8"
    minimums = {"max_f1_drop": 0, "max_class_f1_drop": 0, "max_memory_mb": 1, "max_latency_ratio_vs_teacher_int8": 0}

    def check(self, key: str) -> None:
        _check(0 <= self.max_agreement_drop <= 100, f"{key}.max_agreement_drop", self.max_agreement_drop,
               "points of agreement F1 in [0, 100]")
        for name in ("min_f1", "min_export_fidelity"):
            _check(0 <= getattr(self, name) <= 1, f"{key}.{name}", getattr(self, name), "an F1 in [0, 1]")
        _check(0 < self.go_latency_ms <= self.nogo_latency_ms, f"{key}.go_latency_ms", self.go_latency_ms,
               f"a latency > 0 and <= gate.nogo_latency_ms ({self.nogo_latency_ms})")
        model, sep, variant = self.variant.partition(":")
        _check(bool(model.strip()) and ":" not in variant and (not sep or bool(variant.strip())), f"{key}.variant",
               self.variant, "MODEL or MODEL:VARIANT, a --model name of bench (e.g. onnx_int8, final:cpu_int8)")


@dataclass(frozen=True)
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    teacher: TeacherParams = field(default_factory=TeacherParams)
    annotate: AnnotateParams = field(default_factory=AnnotateParams)
    student: StudentParams = field(default_factory=StudentParams)
    train: TrainParams = field(default_factory=TrainParams)
    distill: DistillParams = field(default_factory=DistillParams)
    pruning: PruningParams = field(default_factory=PruningParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    export: ExportParams = field(default_factory=ExportParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    bench: BenchParams = field(default_factory=BenchParams)
    gate: GateParams = field(default_factory=GateParams)

    def validate(self) -> None:
        for f in fields(self):
            getattr(self, f.name).validate(f.name)
        layer_map = self.train.layer_map
        _check(max(layer_map.student) <= self.student.num_layers, "train.layer_map.student",
               list(layer_map.student), f"student layer numbers <= student.num_layers={self.student.num_layers}")
        for key, schedule in (("distill", self.distill), ("finetune", self.finetune)):
            _check(schedule.learning_rate * self.train.crf_lr_multiplier < 1, "train.crf_lr_multiplier",
                   self.train.crf_lr_multiplier, f"a number whose product with {key}.learning_rate is < 1")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamsError(f"{key} = {value!r} is out of range; allowed: {allowed}")


def _check_weights(weights: Weights, key: str) -> None:
    _check(min(weights) >= 0 < weights.ce, key, list(weights), "four weights [ce, kd, hidden, crf], all >= 0, ce > 0")
