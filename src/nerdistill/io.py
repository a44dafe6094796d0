"""Atomic file writes and line-numbered text and JSONL reading.

Every output goes through a temp file (or folder) in the same folder and an os.replace, so an
interrupted stage never leaves a half-written output that DVC would cache. A temp entry is
removed when its block fails or is interrupted (Ctrl-C, SIGTERM); one left by a killed process
(SIGKILL, power loss) carries that process's id and is swept by the next write of the same output.

Every file read line by line (corpus, annotated splits, gold CoNLL, predict's input) goes through
`numbered_lines`, so a byte-order mark, CRLF line ends and bytes that are not UTF-8 are handled the
same way whichever command reads it.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


class InputError(ValueError):
    """Bad user input, with the file and line in the message."""


class OutputError(OSError):
    """An output that cannot be written, named as the user gave it."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_like_new(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp (and safetensors' weight files) are owner-only; give outputs the permissions
    a plain write would, so another user or a service account can read a model folder."""
    mask = _umask()
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)
    if directory:
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _sweep_stale(path: Path) -> None:
    """Remove temp entries of `path` left by processes that no longer run (killed mid-write)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[^/]*\.tmp$")
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            if sibling.is_dir():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


def _prepare(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot create its folder {path.parent} ({err.strerror})") from err
    _sweep_stale(path)


@contextlib.contextmanager
def _named_errors(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """OS errors about the hidden temp entry (any, while it is made), or without a file name (disk
    full), name `path`; errors about other files pass through as they are."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        if tmp is None or err.filename is None or str(tmp) in str(err.filename) or err.errno == errno.ENOSPC:
            raise OutputError(f"{path}: cannot write ({err.strerror or err}); free space or choose another "
                              "location") from err
        raise


def check_writable(path: str | Path) -> None:
    """Fail before any work when `path` cannot be written: its nearest existing folder must be a
    writable folder. Errors name `path`, the location the user gave."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: cannot write there, {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write there, {folder} is not writable; choose another location")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    _prepare(path)
    with _named_errors(path):
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        with _named_errors(path, tmp):
            yield tmp
            _chmod_like_new(tmp, directory=False)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; it replaces `path` only if the block finishes,
    so an interrupted save never leaves a half-written folder (and no file of an older one)."""
    path = Path(path)
    _prepare(path)
    with _named_errors(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _chmod_like_new(tmp, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)


def save_figure(fig: Any, path: str | Path) -> None:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


# (line number, text, None), or (line number, None, what is wrong) for a line that is not UTF-8.
NumberedLine = tuple[int, str | None, str | None]


def numbered_lines(source: Iterable[bytes]) -> Iterator[NumberedLine]:
    """Decode binary lines lazily, numbered from 1: the line end (`\\n` or `\\r\\n`) is stripped and a
    byte-order mark dropped from line 1. A line that is not UTF-8 is reported, not raised, so each
    reader decides whether it stops the input (a corpus, a gold file) or only that line (predict)."""
    for line_no, raw in enumerate(source, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            yield line_no, None, f"not valid UTF-8 (byte {err.start} of the line)"
            continue
        yield line_no, line.removeprefix("\ufeff") if line_no == 1 else line, None


def utf8_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) lazily, as `numbered_lines` reads them; a line that is not UTF-8
    raises with file:line and the fix."""
    path = Path(path)
    with path.open("rb") as handle:
        for line_no, line, error in numbered_lines(handle):
            if line is None:
                raise InputError(f"{path}:{line_no}: {error}; re-encode the file as UTF-8, e.g. "
                                 f"`iconv -f latin1 -t utf-8 {path.name}`")
            yield line_no, line


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; malformed lines raise with file:line."""
    path = Path(path)
    for line_no, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{line_no}: malformed JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
        yield line_no, obj
