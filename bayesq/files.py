"""Writing files atomically, so that an interrupted write never leaves a half-written file behind.

Every file bayesq writes (checkpoints, artifacts, posteriors, experiment results) goes through
:func:`atomic_path`: the content is written to a temporary file in the same directory, flushed to
disk, and renamed over the target with :func:`os.replace`, which POSIX makes atomic. A reader
therefore sees either the old file or the complete new one, never a truncated mix; a killed run
leaves at most a stray ``.<name>.tmp-*`` file, which the next write of the same target removes.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
>>> atomic_write_text(target, "hello")
>>> target.read_text()
'hello'
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError, safe_open

T = TypeVar("T")

__all__ = [
    "MAX_HEADER_BYTES",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "json_header",
    "read_safetensors",
]

MAX_HEADER_BYTES = 2**20  # the JSON header of a bayesq safetensors file (artifact, posterior)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit, move it onto `path` atomically.

    The caller writes the whole file to the yielded path (by any library: safetensors'
    ``save_file``, ``np.savez``, ``matplotlib``'s ``savefig`` with an explicit ``format=``).
    If the block raises, the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left behind by a killed write
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would give
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def json_header(metadata: dict, file_format: str, description: str) -> dict:
    """The JSON header of a bayesq safetensors file (the artifact, the posterior), read from the
    file's metadata entry "bayesq" without trusting it: a string of at most MAX_HEADER_BYTES,
    valid JSON however deeply nested (a RecursionError is caught), a dict whose "format" is
    `file_format`. Raises ValueError saying which of these fails ("not a bayesq <description>"
    for another format); the caller checks the version and the fields."""
    text = metadata.get("bayesq")
    if not isinstance(text, str):
        raise ValueError("the JSON header (metadata 'bayesq') is missing")
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"the JSON header is longer than MAX_HEADER_BYTES ({MAX_HEADER_BYTES})")
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        what = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ValueError(f"the JSON header is malformed ({what})") from None
    if not isinstance(header, dict) or header.get("format") != file_format:
        raise ValueError(f"not a bayesq {description}")
    return header


def read_safetensors(
    path: str | os.PathLike,
    description: str,
    read: Callable[[Any], T],
    error: type[ValueError] = ValueError,
) -> T:
    """`read(f)` on the safetensors file at `path` opened with ``safe_open`` (torch tensors),
    every fault raised as `error` (a ValueError) that names the file: missing ("no such
    <description> file"), not safetensors, unreadable, or what `read` refuses (its KeyError,
    TypeError or ValueError). `read` should check each tensor's dtype and shape before reading
    it (``f.get_slice``), so a file cannot make the reader allocate what its header claims."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {description} file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return read(f)
    except (SafetensorError, RuntimeError) as err:
        raise error(f"{path}: not a readable safetensors file ({err})") from err
    except OSError as err:
        raise error(f"{path}: cannot read the file ({err})") from err
    except (KeyError, TypeError, ValueError) as err:
        raise error(f"{path}: {err}") from None
