"""Load the GLSL programs in ``shaders/``: one file per program, stages chosen by
``#if defined VERTEX_SHADER`` / ``FRAGMENT_SHADER``, ``#include "x.glsl"`` resolved.

The compiled text keeps every file's own line numbers (``#line`` markers, as moderngl-window's
``opengl/program.py`` does), so a compile error names the file and line: ``nodes.glsl:38:29``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import moderngl

from gpurender.errors import GpurenderError

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_GROUP_END = re.compile(r"^\s*#\s*(?:else|elif|endif)\b")
_VERSION = re.compile(r"^\s*#\s*version\b")
_MAX_DEPTH = 8
LINE_STRIDE = 10_000
"""Line ``n`` of a program's ``k``-th file is compiled as line ``k * LINE_STRIDE + n`` of source string
``k``. The file is read back from the line number, not the source string: Mesa reports most expression
errors (an undeclared name, a type mismatch) as source string 0 whatever file they are in."""
_MESA_REF = re.compile(r"^(\d+):(\d+)\((\d+)\)", re.MULTILINE)  # 0:84(29): error: ...
_NVIDIA_REF = re.compile(r"^(\d+)\((\d+)\)", re.MULTILINE)  # 0(84) : error C1008: ...
_STAGES = {"vertex_shader": "vertex", "fragment_shader": "fragment", "geometry_shader": "geometry",
           "Program": "link"}


def shader_dir() -> Path:
    """``gpurender/shaders`` in an installed wheel, the repository's ``shaders/`` in a checkout."""
    try:
        path = Path(str(resources.files("gpurender.shaders")))
        if (path / "common.glsl").is_file():
            return path
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "shaders"


@dataclass(frozen=True)
class ProgramSource:
    """One program's text with its includes inlined and ``#line`` markers, and the files they name."""

    name: str
    version: str
    """The main file's ``#version`` line; the stage's ``#define`` lines go right after it."""
    body: str
    """Everything after the ``#version`` line, starting with ``#line 2 0``."""
    files: tuple[str, ...]
    """File names by id: ``files[0]`` is the program's own file, then each included file once."""

    def stage(self, stage: str, defines: Sequence[str] = ()) -> str:
        """The text to compile as ``stage`` (``VERTEX_SHADER``...), with ``#define NAME 1`` for it and
        for each of ``defines``."""
        lines = "".join(f"#define {d} 1\n" for d in (stage, *defines))
        return f"{self.version}\n{lines}{self.body}"

    def locate(self, log: str) -> str:
        """``log`` (a GL compiler's messages) with its ``<source>:<line>(<column>)`` (Mesa) and
        ``<source>(<line>)`` (NVIDIA) references as ``<file>:<line>:<column>`` / ``<file>:<line>``."""

        def where(line: int) -> str | None:
            k, n = divmod(line, LINE_STRIDE)
            return f"{self.files[k]}:{n}" if k < len(self.files) else None

        def mesa(m: re.Match[str]) -> str:
            at = where(int(m.group(2)))
            return m.group(0) if at is None else f"{at}:{m.group(3)}"

        def nvidia(m: re.Match[str]) -> str:
            return where(int(m.group(2))) or m.group(0)

        return _NVIDIA_REF.sub(nvidia, _MESA_REF.sub(mesa, log))


def _marker(file_id: int, line: int) -> str:
    """``#line`` that makes the next line read as ``line`` of file ``file_id``."""
    return f"#line {file_id * LINE_STRIDE + line} {file_id}"


def _find(name: str, folders: Sequence[Path]) -> Path:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise GpurenderError(f"shader {name} not found in {', '.join(map(str, folders))}")


def _inline(name: str, folders: Sequence[Path], files: list[str], depth: int) -> list[str]:
    """The lines of ``name`` with its includes inlined, each file's lines marked with its own numbers.

    After an include (and after every ``#else``/``#elif``/``#endif`` of a file that includes, in case
    the include sat in a group the preprocessor skipped, whose lines it still counts) a marker
    restores the including file's numbering."""
    if depth > _MAX_DEPTH:
        raise GpurenderError(f"shader include depth over {_MAX_DEPTH} at {name} (a cycle?)")
    lines = _find(name, folders).read_text().splitlines()
    if len(lines) >= LINE_STRIDE:
        raise GpurenderError(f"shader {name}: {len(lines)} lines, at most {LINE_STRIDE - 1} are supported")
    if name not in files:
        files.append(name)
    file_id = files.index(name)
    includes = any(_INCLUDE.match(line) for line in lines)
    out = [_marker(file_id, 1)] if depth else []
    for n, line in enumerate(lines, 1):
        if m := _INCLUDE.match(line):
            out += _inline(m.group(1), folders, files, depth + 1)
            out.append(_marker(file_id, n + 1))
            continue
        out.append(line)
        if includes and _GROUP_END.match(line):
            out.append(_marker(file_id, n + 1))
    return out


@functools.cache
def program_source(name: str, search: tuple[Path, ...] = ()) -> ProgramSource:
    """``<name>.glsl`` with its includes inlined; files are looked for in ``search``, then in
    :func:`shader_dir`. The file must start with its ``#version`` line."""
    files: list[str] = []
    lines = _inline(f"{name}.glsl", (*search, shader_dir()), files, 0)
    if not lines or not _VERSION.match(lines[0]):
        raise GpurenderError(f"shader {name}.glsl: the first line must be its #version")
    body = "\n".join([_marker(0, 2), *lines[1:]]) + "\n"
    return ProgramSource(name, lines[0], body, tuple(files))


def _compile_error(source: ProgramSource, defines: Sequence[str], exc: moderngl.Error) -> GpurenderError:
    """One line naming the program, the stage and each message's file and line."""
    text = str(exc)
    stage = next((label for key, label in _STAGES.items() if f"\n{key}\n" in text), "?")
    messages = [line.strip() for line in source.locate(text).splitlines()]
    messages = [m for m in messages[1:] if m and m.strip("=") and m not in _STAGES]
    variant = f" with {', '.join(defines)}" if defines else ""
    what = "does not link" if stage == "link" else f"does not compile ({stage} stage)"
    return GpurenderError(f"shader program {source.name}{variant} {what}: {'; '.join(messages) or text}")


def load_program(ctx: moderngl.Context, name: str, defines: tuple[str, ...] = (),
                 search: tuple[Path, ...] = ()) -> moderngl.Program:
    """Compile ``<name>.glsl`` (found in ``search``, then in :func:`shader_dir`) into a program, with
    ``#define D 1`` for each of ``defines``. A compile or link error raises :class:`GpurenderError`
    naming the program, the stage and ``file.glsl:line`` of every message."""
    source = program_source(name, tuple(search))
    try:
        return ctx.program(vertex_shader=source.stage("VERTEX_SHADER", defines),
                           fragment_shader=source.stage("FRAGMENT_SHADER", defines))
    except moderngl.Error as exc:
        raise _compile_error(source, defines, exc) from None
