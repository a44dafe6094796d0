"""`NerTagger`: texts in, entities with character offsets out, for a student, a teacher or an ONNX export.

`NerTagger.load(path_or_hub_id)` reads what the folder is:

- a CRF student (`config.json` with model_type `nerdistill-crf-student`): constrained Viterbi over
  the emissions; an entity's `score` is the mean, over its words, of the softmax of the emissions
  at the decoded label (cheap, and monotone in the evidence; CRF marginals would also weigh the
  transitions but cost a forward-backward pass per batch);
- an ONNX export (`nerdistill_onnx.json`, written by `nerdistill.export`): the same emissions from
  onnxruntime, the same Viterbi with the transitions saved at export time, the same score;
- anything else with a `config.json`, or a hub id: a token-classification teacher. Its IO, IOB1 or
  IOB2 labels become IOB2; its `score` is the mean softmax probability of its argmax label. It
  reports every type it sees unless `drop_types` says otherwise (evaluate compares it with the
  student on the student's label set that way).

Texts are split into words by `text.split_words`, so entities carry both character offsets into
the input (`text[start:end] == entity["text"]`) and word indices (`token_start`, `token_end`,
end exclusive). Lines longer than the model's window are read in overlapping windows and each word
takes the label of the window that owns it (`data.WordTokenizer`); windows run in sorted-length
batches, never all at once, so a 200,000-word line needs memory for one batch of windows.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from nerdistill.data import NerCollator, Window, WordTokenizer
from nerdistill.io import InputError, atomic_path, read_json
from nerdistill.labels import ordered_labels, student_labels
from nerdistill.modeling import CrfStudent, StudentConfig, load_teacher, teacher_forward, viterbi
from nerdistill.params import TeacherParams
from nerdistill.text import Word, entity_spans, iob1_to_iob2, split_words
from nerdistill.text import drop_types as drop_entity_types  # `drop_types` names the tagger's option

log = logging.getLogger(__name__)

ONNX_MANIFEST = "nerdistill_onnx.json"
CRF_FILE = "crf.json"
# Sub-token windows never exceed this, whatever the model allows: attention cost grows with its square.
MAX_WINDOW = 512


class Backend(Protocol):
    """Labels and per-word scores of a collated batch of windows, one list per row (its real words)."""

    kind: str
    labels: list[str]

    def predict(self, batch: dict[str, torch.Tensor]) -> list[tuple[list[str], list[float]]]: ...


@dataclass(frozen=True)
class CrfWeights:
    """Decoding weights of a CRF with the IOB2 constraints already applied (impossible moves ~ -1e4)."""

    start: torch.Tensor  # (L,)
    end: torch.Tensor  # (L,)
    transitions: torch.Tensor  # (L, L), [previous, next]

    def decode(self, emissions: torch.Tensor, word_mask: torch.Tensor, labels: Sequence[str]
               ) -> list[tuple[list[str], list[float]]]:
        emissions = emissions.float()  # (B, W, L)
        paths = viterbi(emissions, word_mask.bool(), self.start, self.end, self.transitions)
        return _with_scores(emissions.softmax(-1), paths, labels)


def _with_scores(probs: torch.Tensor, paths: list[list[int]], labels: Sequence[str]
                 ) -> list[tuple[list[str], list[float]]]:
    """Each path's labels and the probability `probs` (B, W, L) gives each chosen label."""
    out = []
    for row, path in enumerate(paths):
        chosen = probs[row, torch.arange(len(path)), torch.tensor(path, dtype=torch.long)]  # (n,)
        out.append(([labels[i] for i in path], chosen.tolist()))
    return out


class StudentBackend:
    kind = "student"

    def __init__(self, model: CrfStudent, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.labels = ordered_labels(model.config.id2label)
        start, end, moves = model.constrained_transitions()
        self.crf = CrfWeights(start.float(), end.float(), moves.float())

    def predict(self, batch: dict[str, torch.Tensor]) -> list[tuple[list[str], list[float]]]:
        batch = {key: value.to(self.device) for key, value in batch.items()}
        emissions = self.model(**batch).emissions  # (B, W, L)
        return self.crf.decode(emissions, batch["word_mask"], self.labels)


class TeacherBackend:
    """A token-classification model read at each word's first sub-token; labels stay in its own scheme
    (IO, IOB1 or IOB2) until the whole line is stitched, then become IOB2."""

    kind = "teacher"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.labels = ordered_labels(model.config.id2label)

    def predict(self, batch: dict[str, torch.Tensor]) -> list[tuple[list[str], list[float]]]:
        batch = {key: value.to(self.device) for key, value in batch.items()}
        logits, _ = teacher_forward(self.model, batch, output_hidden_states=False)  # (B, W, Lt)
        probs = logits.float().softmax(-1)  # (B, W, Lt)
        best = probs.argmax(-1)  # (B, W)
        lengths = batch["word_mask"].sum(dim=1).tolist()
        return _with_scores(probs, [best[row, :n].tolist() for row, n in enumerate(lengths)], self.labels)


class OnnxBackend:
    """The exported encoder + emissions under onnxruntime; Viterbi with the exported CRF weights."""

    kind = "onnx"

    def __init__(self, folder: Path, manifest: dict[str, Any], device: torch.device, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(folder / manifest["model_file"]), options, providers=providers)
        self.input_names = [node.name for node in self.session.get_inputs()]
        crf = read_json(folder / CRF_FILE)
        self.labels = list(crf["labels"])
        self.crf = CrfWeights(*(torch.tensor(crf[key], dtype=torch.float32) for key in ("start", "end", "transitions")))

    def predict(self, batch: dict[str, torch.Tensor]) -> list[tuple[list[str], list[float]]]:
        feeds = {name: batch[name].numpy() for name in self.input_names}
        emissions = torch.from_numpy(self.session.run(["emissions"], feeds)[0])  # (B, W, L)
        return self.crf.decode(emissions, batch["word_mask"], self.labels)


class NerTagger:
    """Tags texts (`tagger(texts)`) or pre-split sentences (`tagger.tag_words(sentences)`)."""

    def __init__(self, backend: Backend, tokenizer: PreTrainedTokenizerBase, max_length: int, stride: int,
                 drop_types: Iterable[str] = (), batch_size: int = 32) -> None:
        self.backend = backend
        self.words = WordTokenizer(tokenizer, max_length, stride)
        self.collator = NerCollator(tokenizer.pad_token_id)
        self.drop_types = tuple(drop_types)
        self.batch_size = batch_size
        self.max_length, self.stride = max_length, stride

    @classmethod
    def load(cls, path_or_hub_id: str | Path, device: str | torch.device | None = None,
             max_length: int | None = None, stride: int | None = None, drop_types: Iterable[str] = (),
             batch_size: int = 32, threads: int | None = None, source: str = "model") -> NerTagger:
        """A tagger for a student folder, an ONNX export folder, a teacher folder or a hub id.
        `source` names where the path came from (`--model`, `teacher.model_name`) in errors.

        `max_length`/`stride` (sub-tokens per window / shared by two windows) default to the
        student's training settings from its provenance, else to what the model's positions allow
        (at most 512) and a quarter of that; a `max_length` given alone gets a quarter of it as
        stride. `threads` sets onnxruntime's intra-op threads (torch's are the caller's to set).
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        kind, folder = model_kind(path_or_hub_id)
        if kind == "onnx":
            manifest = read_json(folder / ONNX_MANIFEST)
            backend: Backend = OnnxBackend(folder, manifest, device, threads)
            tokenizer = load_tokenizer(folder)
            limit = manifest["max_positions"]
            default_length, default_stride = manifest["max_length"], manifest["stride"]
        elif kind == "student":
            model = CrfStudent.from_pretrained(folder)
            backend, tokenizer = StudentBackend(model, device), load_tokenizer(folder)
            limit = window_length(model.config.encoder.max_position_embeddings, tokenizer)
            default_length, default_stride = student_window(model.config, tokenizer)
        else:
            try:
                model, tokenizer = load_teacher(path_or_hub_id, device, key=source)
            except OSError as err:
                raise InputError(str(err)) from err
            backend = TeacherBackend(model, device)
            limit = default_length = window_length(model.config.max_position_embeddings, tokenizer)
            default_stride = default_length // 4
        if max_length is not None and not 8 <= max_length <= limit:
            raise InputError(f"max_length={max_length}: {path_or_hub_id} takes windows of 8 to {limit} sub-tokens")
        length = max_length or default_length
        if stride is None:
            stride = default_stride if max_length is None else length // 4
        tagger = cls(backend, tokenizer, length, stride, drop_types, batch_size)
        log.info("%s tagger from %s on %s: labels %s, windows of %d sub-tokens (stride %d)", kind,
                 path_or_hub_id, device, tagger.labels, tagger.max_length, tagger.stride)
        return tagger

    @classmethod
    def for_teacher(cls, teacher: TeacherParams, device: str | torch.device | None = None,
                    drop_types: Iterable[str] = (), threads: int | None = None) -> NerTagger:
        """The teacher windowed as params say: `teacher.max_length` sub-tokens (at most what its
        positions take) sharing `teacher.stride`. annotate, evaluate and bench all tag the teacher
        through here, so its tags on a long line do not depend on which stage produced them."""
        try:
            tagger = cls.load(teacher.model_name, device, drop_types=drop_types, batch_size=teacher.batch_size,
                              threads=threads, source="teacher.model_name")
        except InputError as err:
            message = str(err)
            if "teacher.model_name" not in message:
                message = f"teacher.model_name = {teacher.model_name!r}: {message}; point it at a teacher folder"
            raise InputError(message) from err
        length = min(teacher.max_length, tagger.max_length)
        return cls(tagger.backend, tagger.words.tokenizer, length, min(teacher.stride, length // 2 - 1),
                   drop_types, teacher.batch_size)

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def window(self) -> tuple[int, int]:
        """(max_length, stride): sub-tokens per window, and shared by two consecutive windows."""
        return self.max_length, self.stride

    @property
    def labels(self) -> list[str]:
        """The IOB2 labels this tagger can output (after `drop_types`)."""
        return student_labels(dict(enumerate(self.backend.labels)), self.drop_types)

    def __call__(self, texts: Sequence[str], batch_size: int | None = None) -> list[list[dict[str, Any]]]:
        """Entities of each text: `{"text", "type", "start", "end", "token_start", "token_end", "score"}`."""
        words = [split_words(text) for text in texts]
        tagged = self._tag([[word.text for word in line] for line in words], batch_size, self.drop_types)
        return [_entities(text, line, tags, scores) for text, line, (tags, scores) in zip(texts, words, tagged)]

    def tag_words(self, sentences: Sequence[Sequence[str]], batch_size: int | None = None,
                  drop_types: Iterable[str] | None = None, progress: str | None = None) -> list[list[str]]:
        """IOB2 tags of pre-split words, one list per sentence; `drop_types` overrides the tagger's;
        `progress` names a progress bar over the batches (none when unset)."""
        dropped = self.drop_types if drop_types is None else tuple(drop_types)
        return [tags for tags, _ in self._tag(sentences, batch_size, dropped, progress)]

    @torch.inference_mode()
    def _tag(self, sentences: Sequence[Sequence[str]], batch_size: int | None,
             dropped: tuple[str, ...], progress: str | None = None) -> list[tuple[list[str], list[float]]]:
        tags: list[list[str]] = [[""] * len(words) for words in sentences]
        scores: list[list[float]] = [[0.0] * len(words) for words in sentences]
        tagged = self._windows_tagged(sentences, batch_size or self.batch_size, progress)
        for line, window, (labels, probs) in tagged:
            for word, mine, label, prob in zip(window.word_ids, window.owned, labels, probs):
                if mine:
                    tags[line][word], scores[line][word] = label, prob
        # Stitching can leave an I-X after a window edge whose other side said O; reading it as
        # B-X (as iob1_to_iob2 does) keeps the output valid IOB2, and IO teachers become IOB2 here.
        return [(drop_entity_types(iob1_to_iob2(line), dropped), line_scores)
                for line, line_scores in zip(tags, scores)]

    def _windows_tagged(self, sentences: Sequence[Sequence[str]], batch_size: int, progress: str | None = None
                        ) -> Iterator[tuple[int, Window, tuple[list[str], list[float]]]]:
        """(line, window, backend output) for every window, run in batches of similar length."""
        flat = [(line, window) for line, words in enumerate(sentences) for window in self.words.windows(words)]
        # Similar lengths together: far less padding, so far less wasted compute.
        flat.sort(key=lambda item: len(item[1].input_ids))
        for begin in tqdm(range(0, len(flat), batch_size), desc=progress, unit="batch", disable=progress is None):
            chunk = flat[begin:begin + batch_size]
            batch = self.collator([{"input_ids": w.input_ids, "word_index": w.word_index} for _, w in chunk])
            for (line, window), output in zip(chunk, self.backend.predict(batch)):
                yield line, window, output


def load_tagger(path: str, teacher: TeacherParams, device: str | torch.device | None = None,
                threads: int | None = None) -> NerTagger:
    """The tagger a stage compares: the teacher (`path` is `teacher.model_name`) windowed from params,
    any other folder as it was saved."""
    if path == teacher.model_name:
        return NerTagger.for_teacher(teacher, device, threads=threads)
    return NerTagger.load(path, device, threads=threads)


def _entities(text: str, words: list[Word], tags: list[str], scores: list[float]) -> list[dict[str, Any]]:
    entities = []
    for entity_type, first, last in entity_spans(tags):
        start, end = words[first].start, words[last - 1].end
        entities.append({"text": text[start:end], "type": entity_type, "start": start, "end": end,
                         "token_start": first, "token_end": last,
                         "score": round(sum(scores[first:last]) / (last - first), 4)})
    return entities


# --- model folders ------------------------------------------------------------------------------

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
        model_file = read_json(folder / ONNX_MANIFEST).get("model_file", "model.onnx")
        _require(folder, (model_file, CRF_FILE, "tokenizer_config.json"), "an ONNX export; re-run nerdistill export")
        return "onnx", folder
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{folder}: no config.json nor {ONNX_MANIFEST}; this is not a model folder (a student "
                         "saved by distill/prune/finetune, an ONNX export or a Hugging Face model)")
    if read_json(config_path).get("model_type") == StudentConfig.model_type:
        _require(folder, ("model.safetensors", "tokenizer_config.json"),
                 "a student folder; re-run the stage that wrote it")
        return "student", folder
    return "teacher", folder


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


def student_window(config: StudentConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(max_length, stride) the student was trained with (its provenance), else what its positions allow."""
    trained = (config.provenance or {}).get("params", {})
    limit = window_length(config.encoder.max_position_embeddings, tokenizer)
    length = min(int(trained.get("student.max_length", limit)), limit)
    return length, min(int(trained.get("teacher.stride", length // 4)), length // 2 - 1)


# --- streaming ------------------------------------------------------------------------------------

SNIFF = "sniff"  # stdin with --format auto: decided on its first lines

def predict_stream(tagger: NerTagger, input_path: str | Path, output_path: str | Path, batch_size: int = 32,
                   input_format: str = "auto", chunk_lines: int = 1024) -> dict[str, int]:
    """Tag a `.txt` (one text a line) or `.jsonl` (`text`, optional `id` carried through) file, or `-`
    for stdin (`input_format` auto: JSONL when its first non-blank line is a JSON object), into JSONL `{"text", "entities", ["id"]}` on
    `output_path` (`-` for stdout; a file is replaced atomically once every line is written).

    Streams `chunk_lines` lines at a time. One output line per input line: a blank line gives
    `{"text": "", "entities": []}`; a line that is not UTF-8, not a JSON object or has no string
    `text` gives `{"line": N, "error": "..."}` and is logged with its line number. Returns counts
    (`lines`, `tagged`, `empty`, `failed`, `entities`); the CLI exits non-zero when `failed` > 0.
    """
    fmt = _input_format(input_path, input_format)
    counts: Counter[str] = Counter(lines=0, tagged=0, empty=0, failed=0, entities=0)
    progress = tqdm(desc="predict", unit="line", disable=not sys.stderr.isatty())
    with _open_input(input_path) as source, _open_output(output_path) as sink:
        for chunk in _chunks(source, chunk_lines):
            if fmt == SNIFF:
                fmt = _sniff(chunk)
                log.info("%s: read as %s (--format to say otherwise)", input_path, fmt)
            parsed = [_parse_line(line_no, raw, fmt, input_path) for line_no, raw in chunk]
            texts = [row["text"] for row in parsed if "error" not in row and row["text"]]
            found = iter(tagger(texts, batch_size=batch_size))
            for row in parsed:
                _count(counts, row)
                if "error" not in row:
                    row["entities"] = next(found) if row["text"] else []
                    counts["entities"] += len(row["entities"])
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            progress.update(len(chunk))
    progress.close()
    if counts["failed"]:
        log.error("%s: %d of %d lines could not be read (error records written in their place)",
                  input_path, counts["failed"], counts["lines"])
    return dict(counts)


def _input_format(input_path: str | Path, input_format: str) -> str:
    if input_format not in ("auto", "txt", "jsonl"):
        raise InputError(f"input format {input_format!r}: use auto, txt or jsonl")
    if input_format != "auto":
        return input_format
    if str(input_path) == "-":
        return SNIFF
    suffix = Path(input_path).suffix
    if suffix not in (".txt", ".jsonl"):
        raise InputError(f"{input_path}: unknown input format {suffix!r}; use .txt (one text a line) or .jsonl "
                         "(one {\"text\": ...} object a line)")
    return suffix[1:]


def _sniff(chunk: list[tuple[int, bytes]]) -> str:
    """jsonl when the first non-blank line parses as a JSON object, else txt."""
    first = next((raw for _, raw in chunk if raw.strip()), b"")
    try:
        return "jsonl" if isinstance(json.loads(first.decode("utf-8").lstrip("\ufeff")), dict) else "txt"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "txt"


@contextlib.contextmanager
def _open_input(path: str | Path) -> Iterator[BinaryIO]:
    """Binary lines of a file, or of stdin (left open)."""
    if str(path) == "-":
        yield sys.stdin.buffer
        return
    if not Path(path).is_file():
        raise InputError(f"{path}: input file not found")
    with Path(path).open("rb") as handle:
        yield handle


@contextlib.contextmanager
def _open_output(path: str | Path) -> Iterator[TextIO]:
    """stdout, or a temp file that replaces `path` only when every line is written."""
    if str(path) == "-":
        yield sys.stdout
        return
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        yield handle


def _chunks(source: BinaryIO, size: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for line_no, raw in enumerate(source, start=1):
        chunk.append((line_no, raw))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parse_line(line_no: int, raw: bytes, fmt: str, input_path: str | Path) -> dict[str, Any]:
    """`{"text", ["id"]}` of an input line, or `{"line", "error"}` (logged) when it cannot be read."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        return _error(input_path, line_no, f"not valid UTF-8 (byte {err.start}); re-encode the input as UTF-8")
    if line_no == 1:
        line = line.removeprefix("\ufeff")
    if fmt == "txt":
        return {"text": line}
    if not line.strip():
        return {"text": ""}
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return _error(input_path, line_no, f"malformed JSON ({err.msg} at column {err.colno})")
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return _error(input_path, line_no, "expected a JSON object with a string 'text' field")
    return {"id": obj["id"], "text": obj["text"]} if "id" in obj else {"text": obj["text"]}


def _error(input_path: str | Path, line_no: int, message: str) -> dict[str, Any]:
    log.warning("%s:%d: %s", input_path, line_no, message)
    return {"line": line_no, "error": message}


def _count(counts: Counter[str], row: dict[str, Any]) -> None:
    counts["lines"] += 1
    if "error" in row:
        counts["failed"] += 1
    elif row["text"]:
        counts["tagged"] += 1
    else:
        counts["empty"] += 1
