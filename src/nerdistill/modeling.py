"""The student: a BERT-family encoder, linear emissions and a CRF over words.

The student is built from the teacher (same tokenizer, embeddings and width; a chosen
subset of its layers), so one batch feeds both. The CRF runs over words, not sub-tokens:
each word's emission is read at its first sub-token (`word_index`) and words are
left-packed (`word_mask`), because pytorch-crf needs the first position of every sequence on.

A saved student folder holds `config.json` (a `StudentConfig`: encoder config, head counts
and FFN sizes once pruned, labels, provenance) and `model.safetensors`; `CrfStudent.from_pretrained`
rebuilds the pruned shapes from `head_counts` and `ffn_sizes` before it loads the weights.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchcrf import CRF
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from nerdistill.crf import chain_terms, constrain, iob2_masks, path_scores, viterbi
from nerdistill.data import gather_words
from nerdistill.io import atomic_dir, write_json
from nerdistill.model_folders import STUDENT_MODEL_TYPE
from nerdistill.pruning import resize_ffn, resize_heads

log = logging.getLogger(__name__)


class StudentConfig(PreTrainedConfig):
    """Encoder config + what the student adds: labels, pruned head counts and FFN sizes, provenance.

    `encoder` is the encoder's own config (camembert, roberta, bert, xlm-roberta...), saved
    as a nested dict with its model_type. `head_counts[i]` is the number of attention heads
    layer i keeps after pruning, `ffn_sizes[i]` the number of its FFN (intermediate) neurons
    (None: that part unpruned). `teacher_hidden_size` sizes the projection used by the
    hidden-state loss when the two widths differ. `provenance` records the teacher, the copied
    teacher layers, the layer map and the resolved params; after prune also `heads_kept` (original
    head numbers per layer) and `neurons_kept_mask` (original FFN neurons per layer, as
    `pruning.index_mask` hex bitmasks).
    """

    model_type = STUDENT_MODEL_TYPE
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="camembert")}

    encoder: PreTrainedConfig | dict | None = None
    head_counts: list[int] | None = None
    ffn_sizes: list[int] | None = None
    teacher_hidden_size: int | None = None
    classifier_dropout: float = 0.1
    provenance: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.teacher_hidden_size is None:
            self.teacher_hidden_size = self.encoder.hidden_size
        layers = self.encoder.num_hidden_layers
        for key, largest in (("head_counts", self.encoder.num_attention_heads),
                             ("ffn_sizes", self.encoder.intermediate_size)):
            sizes = getattr(self, key)
            if sizes is None:
                continue
            sizes = [int(size) for size in sizes]
            if len(sizes) != layers or not all(1 <= size <= largest for size in sizes):
                raise ValueError(f"config {key} = {sizes}: expected {layers} numbers, "
                                 f"each in 1..{largest} (one per encoder layer)")
            setattr(self, key, sizes)


@dataclass
class StudentOutput(ModelOutput):
    """`loss`: CRF NLL per word (when labels are given). `emissions`: (B, W, L) word-level scores.
    `hidden_states`: sub-token level in the teacher's width (projected when the widths differ),
    index 0 = embeddings, i = layer i. `crf_scores`: the CRF's (start, end, transitions).
    `marginals`: (B, W, L) per-word CRF marginals at the KD temperature, when one was given.

    Everything a loss needs from the student's parameters comes out of forward: under DDP a
    parameter used outside it (the CRF in the CE or transition loss, the projection) breaks the
    gradient reduction."""

    loss: torch.Tensor | None = None
    emissions: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    crf_scores: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    marginals: torch.Tensor | None = None


class CrfStudent(PreTrainedModel):
    config_class = StudentConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: StudentConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder, add_pooling_layer=False)
        if config.head_counts is not None:
            # Before any weights load: a pruned checkpoint only fits the smaller shapes.
            resize_heads(self.encoder, config.head_counts)
        if config.ffn_sizes is not None:
            resize_ffn(self.encoder, config.ffn_sizes)
        hidden = config.encoder.hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.emissions = nn.Linear(hidden, config.num_labels)
        # pytorch-crf holds the scores; `chain_terms` computes with them (see `crf_terms`).
        self.crf = CRF(config.num_labels, batch_first=True)
        self.hidden_projection = (nn.Linear(hidden, config.teacher_hidden_size)
                                  if config.teacher_hidden_size != hidden else None)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, CRF):
            # pytorch-crf's own reset_parameters range; distill then starts it from the teacher's
            # transition prior unless distill.crf_init is uniform (init_crf_from_prior).
            for param in (module.start_transitions, module.end_transitions, module.transitions):
                init.uniform_(param, -0.1, 0.1)
        else:
            super()._init_weights(module)

    @property
    def o_id(self) -> int:
        return self.config.label2id["O"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_index: torch.Tensor,
                word_mask: torch.Tensor, labels: torch.Tensor | None = None,
                starts_line: torch.Tensor | None = None, ends_line: torch.Tensor | None = None,
                output_hidden_states: bool = False, kd_temperature: float | None = None) -> StudentOutput:
        """`starts_line` / `ends_line` (B,) bool: whether each row's words start / end their line
        (data.Window); None means every row is a whole line. With labels and `kd_temperature`, the
        KD term's marginals come out of the same CRF pass as the loss (`crf_terms`)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=output_hidden_states)
        words = gather_words(out.last_hidden_state, word_index)  # (B, W, H)
        emissions = self.emissions(self.dropout(words))  # (B, W, L)
        loss = marginals = None
        if labels is not None:
            loss, marginals = self.crf_terms(emissions, labels, word_mask, starts_line, ends_line, kd_temperature)
        hidden = out.hidden_states if output_hidden_states else None
        if hidden is not None and self.hidden_projection is not None:
            hidden = tuple(self.hidden_projection(state) for state in hidden)  # (B, T, H_teacher) each
        return StudentOutput(loss=loss, emissions=emissions, hidden_states=hidden,
                             crf_scores=(self.crf.start_transitions, self.crf.end_transitions, self.crf.transitions),
                             marginals=marginals)

    def crf_terms(self, emissions: torch.Tensor, labels: torch.Tensor, word_mask: torch.Tensor,
                  starts_line: torch.Tensor | None = None, ends_line: torch.Tensor | None = None,
                  kd_temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(CRF negative log-likelihood per word, per-word marginals at `kd_temperature` or None), from
        one forward-backward pass over the IOB2-constrained paths (`crf.chain_terms`).

        The NLL is summed over the batch's sequences and divided by its real words, the unit of the KD
        loss, so the loss weights compare like with like (a per-sequence mean would grow with the
        sentence length and outweigh KD by it). With a temperature, the rows at temperature 1 (for the
        NLL) and at T (for KD: every score divided by T) go through the recursion side by side, as one
        batch of 2B rows: the sequential steps are paid once.

        A row whose first word does not start its line (`starts_line` False: a later window of a long
        line) gets no start score, one whose last word does not end it no end score: the CRF's edge
        scores are learnt on the line's edges only, and `viterbi` decodes such rows the same way."""
        mask = word_mask.bool()
        # -100 marks padding; it is masked but still indexed.
        tags = labels.masked_fill(labels == -100, self.o_id)  # (B, W)
        # In fp32 whatever the autocast: half precision would underflow the rescaled recursion.
        emissions = emissions.float()
        scores = [score.float() for score in (self.crf.start_transitions, self.crf.end_transitions,
                                              self.crf.transitions)]
        rows = emissions.size(0)
        if kd_temperature is None:
            stacked, stacked_scores, copies = emissions, scores, 1
        else:
            stacked = torch.cat([emissions, emissions / kd_temperature])
            stacked_scores = [torch.stack([score, score / kd_temperature]).repeat_interleave(rows, dim=0)
                              for score in scores]
            copies = 2
        edges = [None if edge is None else edge.repeat(copies) for edge in (starts_line, ends_line)]
        log_partition, marginals = chain_terms(stacked, mask.repeat(copies, 1), *stacked_scores, *self.iob2_masks(),
                                               *edges, with_marginals=kd_temperature is not None)
        gold = path_scores(emissions, tags, mask, *scores, starts_line, ends_line)
        nll = (log_partition[:rows] - gold).sum() / mask.sum().clamp_min(1)
        return nll, (marginals[rows:] if kd_temperature is not None else None)

    def nll(self, emissions: torch.Tensor, labels: torch.Tensor, word_mask: torch.Tensor,
            starts_line: torch.Tensor | None = None, ends_line: torch.Tensor | None = None) -> torch.Tensor:
        """CRF negative log-likelihood per word (`crf_terms` without the KD marginals)."""
        return self.crf_terms(emissions, labels, word_mask, starts_line, ends_line)[0]

    def iob2_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(allowed_start (L,), allowed_moves (L, L)) bool of the student's labels. Built when first
        asked, not in __init__ as buffers: from_pretrained builds the model on the meta device and
        leaves buffers that are not in the checkpoint uninitialised (random masks, NaN losses)."""
        if getattr(self, "_iob2_masks", None) is None:
            self._iob2_masks = iob2_masks([self.config.id2label[i] for i in range(self.config.num_labels)])
        return self._iob2_masks

    def constrained_transitions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(start (L,), end (L,), transitions (L, L)) with IOB2-impossible moves set to crf.FORBIDDEN."""
        names = [self.config.id2label[i] for i in range(self.config.num_labels)]
        return constrain(self.crf.start_transitions, self.crf.end_transitions, self.crf.transitions, names)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, word_mask: torch.Tensor, starts_line: torch.Tensor | None = None,
               ends_line: torch.Tensor | None = None) -> list[list[int]]:
        """Best IOB2-valid label ids of each sequence, one per real word (rows cut from a line: see viterbi)."""
        start, end, moves = self.constrained_transitions()
        return viterbi(emissions.float(), word_mask.bool(), start.float(), end.float(), moves.float(),
                       starts_line, ends_line)


def parameter_count(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def init_crf_from_prior(student: CrfStudent, prior: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """Set the CRF's start, end and transition scores to the teacher's transition prior (transitions.json's
    log-probabilities, in the student's label order: `DistillContext.crf_prior`).

    On the real stand-in (docs/results.md) a CRF starting there tagged the validation split at 0.78
    F1 after two distill epochs, one starting from the uniform init at 0.71: in a short run the
    emissions have to learn what the prior already knows (impossible moves, how rare entities are)."""
    crf = student.crf
    with torch.no_grad():
        for param, value, key in zip((crf.start_transitions, crf.end_transitions, crf.transitions), prior,
                                     ("start", "end", "transitions")):
            if value.shape != param.shape:
                raise ValueError(f"transitions.json {key!r} has shape {tuple(value.shape)}, the student's CRF "
                                 f"{tuple(param.shape)}; re-run annotate")
            param.copy_(value.to(param.dtype))


def build_student(teacher: PreTrainedModel, id2label: dict[int, str], teacher_layers: list[int],
                  dropout: float, provenance: dict[str, Any],
                  crf_prior: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> CrfStudent:
    """A student whose embeddings and layers are copies of the teacher's.

    `teacher_layers` are 1-based teacher layer numbers, one per student layer, in order.
    `dropout` sets the encoder's hidden and attention dropout and the emissions dropout.
    `crf_prior`, when given, is where the CRF starts (`init_crf_from_prior`).
    """
    base = teacher.base_model
    depth = teacher.config.num_hidden_layers
    bad = [layer for layer in teacher_layers if not 1 <= layer <= depth]
    if bad or not teacher_layers:
        raise ValueError(f"student.teacher_layers = {list(teacher_layers)}: the teacher has {depth} layers; "
                         f"use 1-based layer numbers in 1..{depth} (got {bad or 'an empty list'})")
    encoder_config = _encoder_config(teacher.config, len(teacher_layers), dropout)
    label2id = {name: int(i) for i, name in id2label.items()}
    if "O" not in label2id:
        raise ValueError(f"student labels {sorted(label2id)} have no 'O'; labels must be IOB2 with an O label")
    config = StudentConfig(
        encoder=encoder_config, id2label=dict(id2label), label2id=label2id,
        teacher_hidden_size=teacher.config.hidden_size, classifier_dropout=dropout,
        provenance={"teacher": teacher.config.name_or_path, **provenance, "teacher_layers": list(teacher_layers)})
    student = CrfStudent(config)
    student.encoder.load_state_dict(_mapped_state(base.state_dict(), student.encoder.state_dict(), teacher_layers))
    log.info("student: %d layers copied from teacher layers %s of %d, %d labels", len(teacher_layers),
                list(teacher_layers), depth, config.num_labels)
    if crf_prior is not None:
        init_crf_from_prior(student, crf_prior)
    return student


def _encoder_config(teacher_config: PreTrainedConfig, num_layers: int, dropout: float) -> dict[str, Any]:
    raw = teacher_config.to_dict()
    # Teacher-head fields (its labels, architecture) mean nothing for the student's encoder.
    for key in ("id2label", "label2id", "architectures", "_name_or_path", "finetuning_task", "problem_type"):
        raw.pop(key, None)
    raw.update(num_hidden_layers=num_layers, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return raw


def _mapped_state(teacher_state: dict[str, torch.Tensor], student_state: dict[str, torch.Tensor],
                  teacher_layers: list[int]) -> dict[str, torch.Tensor]:
    """Student encoder key -> a copy of the teacher tensor it starts from (layer i <- teacher_layers[i])."""
    pattern = re.compile(r"^encoder\.layer\.(\d+)\.")
    mapped = {}
    for key in student_state:
        match = pattern.match(key)
        source = (pattern.sub(f"encoder.layer.{teacher_layers[int(match.group(1))] - 1}.", key)
                  if match else key)
        if source not in teacher_state:
            raise ValueError(f"teacher has no weight {source!r} for student weight {key!r}; the teacher must be "
                             "a BERT/RoBERTa/CamemBERT/XLM-R token-classification model")
        mapped[key] = teacher_state[source].detach().clone()
    return mapped


def save_student(student: CrfStudent, tokenizer: Any, out_dir: Path,
                 extra_json: dict[str, Any] | None = None) -> None:
    """Model, tokenizer (and `extra_json` files) side by side, swapped in whole so DVC never caches a
    half-written folder."""
    with atomic_dir(out_dir) as staging:
        student.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name, content in (extra_json or {}).items():
            write_json(staging / name, content)


AutoConfig.register(StudentConfig.model_type, StudentConfig)
AutoModel.register(StudentConfig, CrfStudent)
