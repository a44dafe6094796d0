"""A CRF student (`modeling.CrfStudent`) as a tagger backend: constrained Viterbi over its emissions.

An entity's `score` is the mean, over its words, of the softmax of the emissions at the decoded
label (cheap, and monotone in the evidence; CRF marginals would also weigh the transitions but cost a
forward-backward pass per batch).
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from nerdistill.crf import CrfWeights
from nerdistill.labels import ordered_labels
from nerdistill.model_folders import check_vocabulary, load_tokenizer, student_window, window_length
from nerdistill.modeling import CrfStudent
from nerdistill.tagger.core import WindowLimits, WindowOutput, with_scores


class StudentBackend:
    kind = "student"

    def __init__(self, model: CrfStudent, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.labels = ordered_labels(model.config.id2label)
        start, end, moves = model.constrained_transitions()
        self.crf = CrfWeights(start.float(), end.float(), moves.float())

    def predict(self, batch: dict[str, torch.Tensor]) -> list[WindowOutput]:
        batch = {key: value.to(self.device) for key, value in batch.items()}
        emissions = self.model(**batch).emissions.float()  # (B, W, L)
        return with_scores(emissions.softmax(-1), self.crf.decode(emissions, batch), self.labels)


def open_student(folder: Path, device: torch.device) -> tuple[StudentBackend, PreTrainedTokenizerBase, WindowLimits]:
    """The backend, tokenizer and window limits of a student folder: by default the window it was
    trained with (its provenance)."""
    model = CrfStudent.from_pretrained(folder)
    tokenizer = load_tokenizer(folder)
    check_vocabulary(folder, tokenizer, model.config.encoder.vocab_size)  # the rows from_pretrained made
    backend = StudentBackend(model, device)
    limit = window_length(model.config.encoder.max_position_embeddings, tokenizer)
    return backend, tokenizer, WindowLimits(limit, *student_window(model.config, tokenizer))
