"""Model folders: which kind a path is (student, ONNX export or teacher), its tokenizer, its window.

A folder is an ONNX export when it holds `nerdistill_onnx.json` (written by `nerdistill.export`: of a
student, with its `crf.json`, or of a teacher, `exported: teacher`, decoded by argmax), a student when
its `config.json` says model_type `nerdistill-crf-student`, and a teacher otherwise (as is any hub id).
Errors name the missing file and the stage or command that writes it.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from nerdistill.io import InputError, read_json
from nerdistill.params import Params
from nerdistill.params_reader import flat

# The config.json model_type of a student (modeling.StudentConfig's): the kind of a folder is read
# from its files alone, so a teacher's tagger never imports the student model.
STUDENT_MODEL_TYPE = "nerdistill-crf-student"
ONNX_MANIFEST = "nerdistill_onnx.json"
CRF_FILE = "crf.json"
# The manifest's `exported` value of a teacher's export: no CRF, argmax over its own labels.
EXPORTED_TEACHER = "teacher"
# Sub-token windows never exceed this, whatever the model allows: attention cost grows with its square.
MAX_WINDOW = 512


def model_kind(path_or_hub_id: str | Path) -> tuple[str, Path]:
    """("student" | "onnx" | "teacher", folder) of a model folder; a hub id is a "teacher".

    Raises InputError naming the missing file when a local folder is not a usable model.
    """
    name = str(path_or_hub_id)
    folder = Path(name).expanduser()
    looks_local = folder.is_absolute() or name.startswith((".", "~")) or folder.exists()
    if not looks_local:
        return "teacher", folder
    if not folder.is_dir():
        raise InputError(f"{folder}: no such model folder; pass a student folder (models/student_final), "
                         "an ONNX export folder (nerdistill export) or a token-classification model")
    if (folder / ONNX_MANIFEST).is_file():
        manifest = read_json(folder / ONNX_MANIFEST)
        if manifest.get("exported") == EXPORTED_TEACHER:
            _require(folder, (manifest.get("model_file", "model.onnx"), "tokenizer_config.json"),
                     "a teacher's ONNX export; re-run nerdistill export-teacher")
        else:
            _require(folder, (manifest.get("model_file", "model.onnx"), CRF_FILE, "tokenizer_config.json"),
                     "an ONNX export; re-run nerdistill export")
        return "onnx", folder
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{folder}: no config.json nor {ONNX_MANIFEST}; this is not a model folder (a student "
                         "saved by distill/prune/finetune, an ONNX export or a Hugging Face model)")
    if read_json(config_path).get("model_type") == STUDENT_MODEL_TYPE:
        _require(folder, ("model.safetensors", "tokenizer_config.json"),
                 "a student folder; re-run the stage that wrote it")
        return "student", folder
    return "teacher", folder


def model_roles(models: dict[str, str]) -> tuple[str, str]:
    """(teacher, final student) names: the teacher comes first, the final student is the last
    student folder (ONNX exports listed after it are scored and timed like any model, but the
    final student stays the PyTorch folder they were exported from)."""
    names = list(models)
    students = [name for name in names[1:] if model_kind(models[name])[0] == "student"]
    if not students:
        raise ValueError(f"models {names}: expected the teacher first and at least one student folder "
                         "(--model final=models/student_final)")
    return names[0], students[-1]


def _require(folder: Path, names: Sequence[str], what: str) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: missing {', '.join(missing)} for {what}")


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise InputError(f"{folder}: the tokenizer files do not load ({err}); save the tokenizer beside the "
                         "model (tokenizer.save_pretrained)") from err


def window_length(max_position_embeddings: int, tokenizer: PreTrainedTokenizerBase) -> int:
    """Sub-tokens per window the model can take: RoBERTa-family position ids start after the padding
    index (2 positions lost); BERT loses none, so 2 fewer is safe for every family."""
    return min(MAX_WINDOW, max_position_embeddings - 2, int(tokenizer.model_max_length))


def student_window(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(max_length, stride) a student (`config`: its StudentConfig) was trained with (its provenance), else
    what its positions allow."""
    trained = (config.provenance or {}).get("params", {})
    limit = window_length(config.encoder.max_position_embeddings, tokenizer)
    length = min(int(trained.get("student.max_length", limit)), limit)
    return length, min(int(trained.get("teacher.stride", length // 4)), length // 2 - 1)


def provenance(params: Params, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a saved student carries about how it was made: the teacher, the copied layers, the layer
    map and every param of the stage that trained it last, on top of what earlier stages recorded
    (prune's kept heads). `params` also tells a tagger the window the student was trained with."""
    return {**(earlier or {}), "teacher": params.teacher.model_name,
            "teacher_layers": list(params.student.teacher_layers),
            "layer_map": dataclasses.asdict(params.train.layer_map), "params": flat(params)}


def add_model_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The options of a command comparing the teacher with other models (evaluate, bench)."""
    parser.add_argument("--data", type=Path, required=True, help="annotate's output folder")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                        help=f"a student or ONNX export folder to {verb}, after the teacher from params "
                             "(repeatable); the final student is the last student folder")
    parser.add_argument("--metrics", type=Path, required=True)


def named_models(teacher: str, values: Sequence[str]) -> dict[str, str]:
    """{"teacher": teacher, NAME: FOLDER, ...} from `--model NAME=FOLDER` options, in order."""
    models = {"teacher": teacher}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--model {value!r}: expected NAME=FOLDER, e.g. --model final=models/student_final")
        models[name] = path
    return models
