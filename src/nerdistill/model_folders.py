"""Model folders: which kind a path is (student, ONNX export or teacher), its tokenizer, its window.

A folder is an ONNX export when it holds `nerdistill_onnx.json` (written by `nerdistill.export`: of a
student, with its `crf.json`, or of a teacher, `exported: teacher`, decoded by argmax), a student when
its `config.json` says model_type `nerdistill-crf-student`, and a teacher otherwise (as is any hub id).
Errors name the missing or broken file and the stage or command that writes it: a folder is checked before
anything loads from it (weights cut short, tokenizer files missing or of another model), since transformers
otherwise fails with a traceback or, for a missing tokenizer, quietly builds one of a few special tokens.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from nerdistill.io import InputError, read_json

# The config.json model_type of a student (modeling.StudentConfig's): the kind of a folder is read
# from its files alone, so a teacher's tagger never imports the student model.
STUDENT_MODEL_TYPE = "nerdistill-crf-student"
ONNX_MANIFEST = "nerdistill_onnx.json"
CRF_FILE = "crf.json"
# The manifest's `exported` value of a teacher's export: no CRF, argmax over its own labels.
EXPORTED_TEACHER = "teacher"
# Sub-token windows never exceed this, whatever the model allows: attention cost grows with its square.
MAX_WINDOW = 512
# Embedding tables are often padded to a multiple of 64 or 128 rows for faster matrix kernels (DeBERTa-v3:
# 128,100 rows for 128,001 pieces): a gap that padding explains is no sign of another model's tokenizer.
EMBEDDING_PADDING = 128


def looks_local(name: str) -> bool:
    """Whether a model name is a folder here rather than a hub id (`name` or `owner/name`): it exists, is
    absolute, starts with `.` or `~`, has more parts than a hub id, or its first part is a folder here (a
    checkout's `models/`, whose .gitignore git tracks), so a missing output is said missing at once instead
    of being looked up on the hub."""
    parts = name.split("/")
    path = Path(name).expanduser()
    return (path.is_absolute() or name.startswith((".", "~")) or path.exists() or "\\" in name
            or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir()))


def model_kind(path_or_hub_id: str | Path) -> tuple[str, Path]:
    """("student" | "onnx" | "teacher", folder) of a model folder; a hub id is a "teacher".

    Raises InputError naming the missing or broken file when a local folder is not a usable model.
    """
    name = str(path_or_hub_id)
    folder = Path(name).expanduser()
    if not looks_local(name):
        return "teacher", folder
    if not folder.is_dir():
        raise InputError(f"{folder}: no such model folder; a pipeline output is made by `dvc repro`, or brought "
                         "from an experiment by `dvc exp apply NAME`; else pass a student folder, an ONNX export "
                         "folder or a token-classification model")
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
        check_weights(folder, "re-run the stage that wrote it")
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


def check_weights(folder: Path, remedy: str) -> None:
    """Refuse a folder holding a safetensors file cut short or unreadable (a copy, download or save that
    stopped), naming the file and `remedy`. Opening one reads only its header, whose offsets must cover
    the file exactly: milliseconds, whatever the model's size."""
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise InputError(f"{folder}: {path.name} is truncated or unreadable ({err}); {remedy}") from err


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `folder`, refused when its files are missing."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise InputError(f"{folder}: the tokenizer files do not load ({err}); save the tokenizer beside the "
                         "model (tokenizer.save_pretrained)") from err
    # Without any of its vocabulary files AutoTokenizer still returns a tokenizer, of its special
    # tokens alone (8 for CamemBERT): every word would be read as unknown and tagged as garbage.
    names = sorted(set(tokenizer.vocab_files_names.values()))
    if not any((folder / name).is_file() for name in names):
        raise InputError(f"{folder}: missing the tokenizer's vocabulary ({' or '.join(names)}); save the "
                         "model's tokenizer beside it (tokenizer.save_pretrained)")
    return tokenizer


def check_vocabulary(where: str | Path, tokenizer: PreTrainedTokenizerBase, rows: int) -> None:
    """Refuse a tokenizer that is not the model's: more pieces than the `rows` of its embedding table (ids
    past the table), or fewer than padding explains (pieces read the rows of other pieces)."""
    pieces = len(tokenizer)
    padded = -(-pieces // EMBEDDING_PADDING) * EMBEDDING_PADDING
    if not pieces <= rows <= padded:
        raise InputError(f"{where}: the tokenizer has {pieces} pieces but the model's embedding table {rows} "
                         "rows, so it is another model's tokenizer; save the model's own tokenizer beside it")


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
