"""The teacher: loading it (hub id or folder), checking params against its config, its forward.

The teacher is any token-classification model transformers loads (CamemBERT, RoBERTa, BERT,
XLM-R); it stays frozen, and every stage that needs it comes through here.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, PreTrainedModel
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from nerdistill.data import gather_words
from nerdistill.io import InputError
from nerdistill.model_folders import check_vocabulary, check_weights, load_tokenizer, looks_local
from nerdistill.params import Params, ParamsError


def stage_teacher(params: Params, device: str | torch.device = "cpu"
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The teacher of a training stage (`teacher.model_name`) and its tokenizer, once every params value
    that depends on it has been checked against its config."""
    return load_teacher(params.teacher.model_name, device, params=params)


def _check_against_teacher(params: Params, config: PretrainedConfig) -> None:
    """Check every params value that depends on the teacher against its config alone (no weights:
    seconds, not the minutes of a big teacher), before a stage writes or deletes anything."""
    name, depth = params.teacher.model_name, config.num_hidden_layers
    for key, layers in (("student.teacher_layers", params.student.teacher_layers),
                        ("train.layer_map.teacher", params.train.layer_map.teacher)):
        bad = [layer for layer in layers if not 1 <= layer <= depth]
        if bad:
            raise ParamsError(f"{key} = {list(layers)}: the teacher {name} has {depth} layers, so layers {bad} do "
                              f"not exist; use 1-based numbers in 1..{depth}")


def teacher_config(name: str) -> PretrainedConfig:
    """The teacher's config.json (a folder or a hub id), without its weights."""
    _local_folder(name, "teacher.model_name")
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise OSError(f"teacher.model_name = {name!r}: no usable config.json ({_first_line(err)}); point it at a "
                      "model folder, or at a hub id with the hub reachable") from err


def _local_folder(name: str, key: str) -> Path | None:
    """The folder `name` is when it looks local (None for a hub id), refused at once when missing: a
    hub lookup of a missing output would retry for a minute before failing."""
    if not looks_local(name):
        return None
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise OSError(f"{key} = {name!r}: no such folder; point {key} at a folder "
                      "holding config.json, the weights and the tokenizer, or at a hub id")
    return folder


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def load_teacher(name_or_path: str | Path, device: str | torch.device = "cpu", key: str = "teacher.model_name",
                 params: Params | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A frozen token-classification teacher in eval mode, and its tokenizer; errors name `key`,
    where the user set the path (a params key or a command-line option). A folder's weights and
    tokenizer files are checked before anything loads, and the tokenizer must be the model's; with
    `params`, every value that depends on the teacher is checked against its config before that."""
    name = str(name_or_path)
    folder = _local_folder(name, key)
    if params is not None:
        _check_against_teacher(params, teacher_config(name))
    try:
        if folder is not None:
            check_weights(folder, "copy or download the teacher's folder again")
        model = AutoModelForTokenClassification.from_pretrained(name)
        tokenizer = load_tokenizer(folder) if folder is not None else AutoTokenizer.from_pretrained(name)
        check_vocabulary(name, tokenizer, model.get_input_embeddings().num_embeddings)
    except InputError as err:
        raise InputError(f"{key} = {name!r}: {err}") from err
    except OSError as err:
        hint = ("Without access to the Hugging Face hub (offline box, HF_HUB_OFFLINE=1) and no cached copy, "
                f"download the model elsewhere and point {key} at its local folder") if folder is None else \
            "the folder needs config.json, the weights (model.safetensors) and the tokenizer files"
        raise OSError(f"{key} = {name!r} could not be loaded ({_first_line(err)}). {hint}") from err
    except ValueError as err:  # e.g. a config.json without a known model_type, an empty folder
        raise OSError(f"{key} = {name!r} is not a token-classification model transformers can load "
                      f"({_first_line(err)}); point {key} at a model folder or hub id") from err
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer


def teacher_forward(teacher: PreTrainedModel, batch: dict[str, torch.Tensor], output_hidden_states: bool
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Teacher logits (B, W, Lt) at each word's first sub-token, and its hidden states if asked."""
    # no_grad rather than inference_mode: the KD and hidden losses save these tensors for the
    # student's backward pass, which inference tensors forbid.
    with torch.no_grad():
        out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      output_hidden_states=output_hidden_states)
    logits = gather_words(out.logits, batch["word_index"])  # (B, W, Lt)
    return logits, (out.hidden_states if output_hidden_states else None)
