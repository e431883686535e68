"""Load the GLSL programs in ``shaders/``: one file per program, stages chosen by
``#if defined VERTEX_SHADER`` / ``FRAGMENT_SHADER``, ``#include "x.glsl"`` resolved."""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

import moderngl

from gpurender.errors import GpurenderError

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)
_MAX_DEPTH = 8


def shader_dir() -> Path:
    """``gpurender/shaders`` in an installed wheel, the repository's ``shaders/`` in a checkout."""
    try:
        path = Path(str(resources.files("gpurender.shaders")))
        if (path / "common.glsl").is_file():
            return path
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "shaders"


@functools.cache
def shader_source(name: str, depth: int = 0) -> str:
    """The text of ``name`` with its includes inlined."""
    if depth > _MAX_DEPTH:
        raise GpurenderError(f"shader include depth over {_MAX_DEPTH} at {name} (a cycle?)")
    path = shader_dir() / name
    if not path.is_file():
        raise GpurenderError(f"shader {name} not found in {path.parent}")
    text = path.read_text()
    return _INCLUDE.sub(lambda m: shader_source(m.group(1), depth + 1), text)


def _stage(source: str, defines: tuple[str, ...]) -> str:
    version, _, body = source.partition("\n")
    lines = "".join(f"#define {d}\n" for d in defines)
    return f"{version}\n{lines}{body}"


def load_program(ctx: moderngl.Context, name: str, defines: tuple[str, ...] = ()) -> moderngl.Program:
    """Compile ``shaders/<name>.glsl`` (with optional variant ``defines``) into a program."""
    source = shader_source(f"{name}.glsl")
    return ctx.program(
        vertex_shader=_stage(source, ("VERTEX_SHADER", *defines)),
        fragment_shader=_stage(source, ("FRAGMENT_SHADER", *defines)),
    )
