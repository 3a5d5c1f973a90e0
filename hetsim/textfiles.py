"""Reading user files: UTF-8 text and strict YAML, every failure one ``InputError`` naming the file;
writing output files whole (``write_text_atomic``, ``open_whole``, ``savefig_whole``).

YAML is read with PyYAML's safe loader plus two fixes: a mapping with the same key twice is refused
(PyYAML keeps the last silently), and ``1e-9`` is a float (YAML 1.1's float pattern needs a dot, so
PyYAML reads it as the string '1e-9'; YAML 1.2 reads it as a number).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import stat
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from hetsim.errors import InputError

# libyaml's parser when PyYAML was built with it (~10x faster on the ~50 catalogue files); the
# constructor and resolver stay Python, so the overrides below apply to either.
_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictLoader(_BASE):  # type: ignore[valid-type, misc]
    """Safe loader that refuses duplicate keys and reads exponent floats as numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if dup:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# a scalar like 1e-9 that is not an int resolves to float (ints keep their own resolver, added first)
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


# The most bytes a user file may hold (a trace at MAX_REQUESTS rows is a few MB): a character device
# that never ends (/dev/zero, /dev/urandom) was read whole, until MemoryError or the OOM killer.
MAX_TEXT_BYTES = 256 * 2**20
# Seconds a named pipe with no writer yet waits for one (``mkfifo p; hetsim ... p & producer > p``);
# none by then: an InputError, not a wait for ever.
FIFO_WAIT_S = 10.0
_CHUNK = 1 << 20


def read_text(path: str | Path) -> str:
    """A file's text as UTF-8, a leading byte-order mark dropped (as editors on Windows and Excel's
    "CSV UTF-8" write it: a trace's first column read as "\ufeffarrival_s", a JSON file refused); a
    missing, unreadable, endless or non-UTF-8 file is an InputError."""
    source = str(path)
    try:
        data = _read_bytes(Path(path), source)
    except FileNotFoundError:
        raise InputError("no such file", source=source) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", source=source) from None
    except OSError as exc:
        if _is_socket(path):  # open() says "No such device or address"
            raise InputError("is a socket, not a file", source=source) from None
        raise InputError(f"cannot read file: {exc.strerror or exc}", source=source) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not a UTF-8 text file (byte {exc.start})", source=source) from None


def _is_socket(path: str | Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _read_bytes(path: Path, source: str) -> bytes:
    """``path``'s bytes, at most ``MAX_TEXT_BYTES``. Opened without waiting (a plain open of a named
    pipe blocks until a writer comes, for ever if none does), then read to its end; a pipe with no
    writer yet is waited on for ``FIFO_WAIT_S`` (one connected, as ``<(cmd)``'s, is read as long as
    it writes)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)
        deadline = time.monotonic() + FIFO_WAIT_S
        chunks: list[bytes] = []
        size, writer = 0, not fifo
        while True:
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:  # a writer is there, nothing written yet: wait for its bytes
                writer = True
                os.set_blocking(fd, True)
                continue
            if chunk:
                writer = True
                size += len(chunk)
                if size > MAX_TEXT_BYTES:
                    raise InputError(f"more than {MAX_TEXT_BYTES // 2**20} MiB", source=source)
                chunks.append(chunk)
                continue
            if writer:  # the end of a file, or of what the pipe's writer sent
                return b"".join(chunks)
            if time.monotonic() >= deadline:
                raise InputError(f"a named pipe nobody wrote to within {FIFO_WAIT_S:g} s", source=source)
            time.sleep(0.02)  # no writer yet (a read of a pipe without one ends at once)
    finally:
        os.close(fd)


def _too_long() -> str:
    return f"an integer longer than {sys.get_int_max_str_digits()} digits"


def _int_or_refused(loader: StrictLoader, node: yaml.ScalarNode) -> int:
    """YAML's int, or a YAML error for one longer than Python converts (``sys.get_int_max_str_digits``)."""
    try:
        return loader.construct_yaml_int(node)  # type: ignore[no-any-return]
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, _too_long(), node.start_mark) from None


StrictLoader.add_constructor("tag:yaml.org,2002:int", _int_or_refused)


class _DuplicateKey(Exception):
    pass


def _refusing_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (``json`` would keep the last one's value, silently)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def parse_json(text: str, source: str) -> Any:
    """JSON text; a syntax error, a key given twice in an object (as ``parse_yaml``), or an integer
    too long to convert is an InputError."""
    try:
        return json.loads(text, object_pairs_hook=_refusing_duplicates)
    except json.JSONDecodeError as e:
        where = f"at line {e.lineno} column {e.colno}"
        raise InputError(f"malformed JSON: {e.msg} {where}", source=source) from None
    except _DuplicateKey as e:
        raise InputError(f"malformed JSON: duplicate key {e.args[0]!r}", source=source) from None
    except ValueError:  # only the integer digit limit (sys.get_int_max_str_digits) raises this
        raise InputError(f"malformed JSON: {_too_long()}", source=source) from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply", source=source) from None


def parse_yaml(text: str, source: str) -> Any:
    """YAML text through ``StrictLoader``; a syntax error or duplicate key is an InputError."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InputError(f"malformed YAML{where}: {problem}", source=source) from None
    except RecursionError:
        raise InputError("malformed YAML: nested too deeply", source=source) from None


def validate_strictly(model: type, data: Any, *, whole_floats: bool = True) -> Any:
    """``data`` (JSON-like, from a user's file) as ``model`` (a dataclass or pydantic model), each value
    of its own JSON type: pydantic's lax mode read ``true`` as 1 (or 1.0), ``"3"`` as 3 and ``1`` as
    true, which change what a file says. Every plan model, rig and catalogue file and sweep spec is read
    here; raises ``ValidationError`` (a value no JSON holds, such as a YAML date, too).

    ``whole_floats``: a number with no fraction (``2.0``) is the integer it names, up to 2**53 (where
    floats stop holding every integer; 1e308 became a 309-digit int that overflowed later). JSON does
    not tell 2 from 2.0, and writers that hold every number as a float (numpy, JavaScript) write 2.0.
    YAML files are written by hand and tell them apart, and a sweep's axis values (``Any``) keep what
    was written: YAML readers pass False."""
    from pydantic import TypeAdapter  # ~0.03 s: only files read into models need it

    try:  # NaN is written as NaN: refused by the models' own checks
        size = _expanded(data, {})
        if size > MAX_VALUES:  # YAML's aliases: 9**8 values of a few lines (~7 GB as JSON)
            raise _refused(
                model, (), None, f"{size:.3g} values once its aliases are expanded; at most {MAX_VALUES:.0e}"
            )
        text = _plain_json(data) if not whole_floats else None  # the catalogue's ~50 files: no walk
        text = text or json.dumps(_json_value(data, whole_floats, ()))
    except _NotJson as exc:
        loc, value = exc.args
        why = f"must be a string, number, true/false, list or mapping, not a {type(value).__name__}"
        raise _refused(model, loc, value, why) from None
    except RecursionError:
        raise _refused(model, (), None, "nested too deeply") from None
    if hasattr(model, "model_validate_json"):  # a pydantic model: no adapter to build (~60 us each)
        return model.model_validate_json(text, strict=True)
    return TypeAdapter(model).validate_json(text, strict=True)  # strict JSON: an array is a tuple


MAX_VALUES = 10**7  # values in one file's data, its YAML aliases expanded (a large plan holds ~10**4)


def _expanded(x: Any, seen: dict[int, int]) -> int:
    """How many values ``x`` holds, each container counted once per place it stands (a YAML alias
    names one object from many places); ``seen`` keeps each container's count, so a few lines that
    nest aliases nine deep are counted, not walked 9**8 times."""
    n = seen.get(id(x))
    if n is None:
        n = 1
        for v in x.values() if isinstance(x, dict) else x if isinstance(x, list | tuple) else ():
            n += _expanded(v, seen) if isinstance(v, dict | list | tuple) else 1
        seen[id(x)] = n
    return n


_EXACT = 2.0**53  # past it a float is no count anyone wrote


def _plain_json(data: Any) -> str | None:
    """``data`` as JSON text when it holds only JSON's values, else None."""
    try:
        return json.dumps(data)
    except (TypeError, ValueError, RecursionError):  # a date, a set, a numpy scalar; a cycle
        return None


def _refused(model: type, loc: tuple[Any, ...], value: Any, why: str) -> Exception:
    from pydantic_core import PydanticCustomError, ValidationError

    error = PydanticCustomError("json_type", why.replace("{", "{{").replace("}", "}}"))
    return ValidationError.from_exception_data(model.__name__, [{"type": error, "loc": loc, "input": value}])


class _NotJson(Exception):
    """(location, value): a value ``json`` cannot hold (a YAML date or set)."""


def _json_value(x: Any, whole_floats: bool, loc: tuple[Any, ...]) -> Any:
    """``x`` as plain JSON values; a numpy scalar (in a plan made in memory) as its Python number."""
    if x is None or isinstance(x, str | bool | int):
        return x
    if isinstance(x, float):
        return int(x) if whole_floats and x.is_integer() and abs(x) <= _EXACT else x
    if isinstance(x, Mapping):
        for k in x:
            if not (k is None or isinstance(k, str | bool | int | float)):
                raise _NotJson((*loc, str(k)), k)
        return {k: _json_value(v, whole_floats, (*loc, k)) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_value(v, whole_floats, (*loc, i)) for i, v in enumerate(x)]
    if hasattr(x, "item") and not hasattr(x, "__len__"):  # numpy's scalars
        return _json_value(x.item(), whole_floats, loc)
    raise _NotJson(loc, x)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level must be a mapping."""
    data = parse_yaml(read_text(path), str(path))
    if not isinstance(data, dict):
        raise InputError("expected a mapping at the top level", source=str(path))
    return data


def temp_beside(path: Path) -> Path:
    """A hidden temporary name beside ``path``, unique to this process and call: written, then
    renamed over ``path`` (``write_text_atomic``, the sweep's Parquet parts)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (``open_whole``)."""
    with open_whole(path) as f:
        f.write(text)


def savefig_whole(fig: Any, path: str | Path, **kwargs: Any) -> None:
    """``fig.savefig(path, **kwargs)`` (a matplotlib figure; the format from the suffix), whole or not
    at all (``open_whole``). Drawn into memory first, so the temporary file lives only for the write
    of the finished bytes: a drawing worker terminated mid-drawing (a stopped sweep's plot pool) leaves
    no temporary file behind (SIGTERM's default action skips ``open_whole``'s clean-up)."""
    drawn = io.BytesIO()
    fig.savefig(drawn, format=Path(path).suffix[1:], **kwargs)
    with open_whole(path, "wb") as f:
        f.write(drawn.getbuffer())


@contextlib.contextmanager
def open_whole(path: str | Path, mode: str = "w", *, newline: str | None = None) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing (``"w"``: UTF-8 text, ``"wb"``: bytes), whole or not at all:
    the block writes a temporary file beside ``path``, renamed over it when the block ends. Two runs
    writing the same path leave one's file, never bytes of both; an interrupted or failed write
    leaves the old file (and no temporary one). Otherwise as a plain open: a symlink's file is
    written (the link stays), an existing file keeps its mode, a new one gets the umask's, and an
    error names ``path`` (not the temporary file). A path that is there and no regular file (a
    named pipe, ``/dev/null``, ``/dev/stdout``) is written in place: there is no file to replace,
    and renaming over it would put a regular file where the device was (as root, ``/dev/null``)."""
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(target)
        kept = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None
    except OSError:  # none yet (or unreadable: the open below says why)
        st, kept = None, None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        try:
            with open(path, mode, encoding=None if "b" in mode else "utf-8", newline=newline) as f:
                yield f
        except OSError as exc:
            if exc.errno is not None:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            raise
        return
    if st is not None and stat.S_ISDIR(st.st_mode):  # '/' has no name to put a temporary one beside
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    tmp = temp_beside(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8", newline=newline) as f:
            if kept is not None:
                os.chmod(tmp, kept)
            yield f
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
