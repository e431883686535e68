"""Shader loading: every shipped program compiles, and a compile error names the file and line of
the mistake, in the program's own file or in a file it includes (compiled for real, no mocks)."""

from __future__ import annotations

import re
from pathlib import Path

import moderngl
import pytest

from gpurender.errors import GpurenderError
from gpurender.render.context import create_headless_context
from gpurender.render.shaders import load_program, shader_dir


@pytest.fixture(scope="module")
def _ctx():
    ctx = create_headless_context()
    yield ctx
    ctx.release()


@pytest.fixture
def ctx(_ctx: moderngl.Context):
    with _ctx:  # current: another test module's context may have been released meanwhile
        yield _ctx


PROGRAMS = sorted(p.stem for p in shader_dir().glob("*.glsl") if p.read_text().startswith("#version"))


@pytest.mark.parametrize(("name", "defines"), [*((p, ()) for p in PROGRAMS), ("yuv420", ("CHROMA",))])
def test_shipped_programs_compile(ctx, name, defines):
    prog = load_program(ctx, name, defines)
    assert isinstance(prog, moderngl.Program)
    prog.release()


def test_every_shipped_program_is_tested():
    assert set(PROGRAMS) == {"compose", "edges", "game", "nodes", "present", "rects", "text", "yuv420"}


# ---------------------------------------------------------------------------------------------
# Errors name the file and line

MAIN = """#version 330 core
// a test program: an include at the top, another only in the fragment stage
#include "lib.glsl"

#if defined VERTEX_SHADER
void main() {
    gl_Position = vec4(lib_value()); //V
}

#elif defined FRAGMENT_SHADER
#include "frag_lib.glsl"
out vec4 f_color;

void main() {
    f_color = vec4(frag_value()); //F
}
#endif
float unused_after_groups() { return 1.0; } //END
"""
LIB = """// shared helpers
#include "inner.glsl"

float lib_value() {
    return inner_value(); //LIB
}
"""
INNER = """// the include's include
float inner_value() {
    return 1.0; //INNER
}
"""
FRAG_LIB = """// fragment-only helpers, several lines long
// so that a wrong line count after
// this include shows
float frag_value() {
    return 0.5; //FRAGLIB
}
"""
MISTAKES = {
    "undeclared": "float broken = undeclared_name;",  # Mesa reports these as source string 0
    "type": "int broken = 1.5;",
    "syntax": "float broken = 1.0 1.0;",  # reported with the right source string
}


def _write(folder: Path, mark: str, mistake: str) -> tuple[str, int]:
    """The test program in ``folder`` with ``mistake`` on the line tagged ``//<mark>`` -> (file, line)."""
    files = {"prog.glsl": MAIN, "lib.glsl": LIB, "inner.glsl": INNER, "frag_lib.glsl": FRAG_LIB}
    where = None
    for name, text in files.items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.endswith(f"//{mark}"):
                lines[i] = f"{mistake} {line}"
                where = (name, i + 1)
        (folder / name).write_text("\n".join(lines) + "\n")
    assert where is not None
    return where


@pytest.mark.parametrize("kind", sorted(MISTAKES))
@pytest.mark.parametrize(("mark", "stage"), [
    ("V", "vertex"),          # main file, after an include
    ("F", "fragment"),        # main file, after an include made in a group the vertex stage skips
    ("END", "vertex"),        # main file, after the #endif of that group
    ("LIB", "vertex"),        # an included file, after its own include
    ("INNER", "vertex"),      # an include's include
    ("FRAGLIB", "fragment"),  # an include inside the fragment group
])
def test_error_names_file_and_line(ctx, tmp_path, mark, stage, kind):
    mistake = MISTAKES[kind]
    name, line = _write(tmp_path, mark, mistake)
    with pytest.raises(GpurenderError) as info:
        load_program(ctx, "prog", search=(tmp_path,))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"shader program prog does not compile ({stage} stage): "), message
    assert re.search(rf"\b{re.escape(name)}:{line}:\d+: error", message), message
    # every reference points at the broken file and line: nothing left in the driver's numbering
    refs = re.findall(r"(\S+\.glsl):(\d+):\d+:", message)
    assert refs and set(refs) == {(name, str(line))}, message


def test_error_after_a_shipped_include(ctx, tmp_path):
    """A program in another folder including the shipped common.glsl: its lines after the include
    keep their own numbers."""
    common = (shader_dir() / "common.glsl").read_text()
    assert common.count("\n") > 20
    (tmp_path / "mine.glsl").write_text(
        '#version 330 core\n#include "common.glsl"\n\n#if defined VERTEX_SHADER\nvoid main() {\n'
        "    gl_Position = frame_to_clip(vec2(0.0), missing_frame);\n}\n"
        "#elif defined FRAGMENT_SHADER\nout vec4 c;\nvoid main() { c = vec4(1.0); }\n#endif\n")
    with pytest.raises(GpurenderError, match=r"mine\.glsl:6:\d+: error: `missing_frame' undeclared"):
        load_program(ctx, "mine", search=(tmp_path,))


def test_link_error_names_the_program(ctx, tmp_path):
    (tmp_path / "unlinked.glsl").write_text(
        "#version 330 core\n#if defined VERTEX_SHADER\nout float v_x;\nvoid main() { v_x = 1.0; "
        "gl_Position = vec4(v_x); }\n#elif defined FRAGMENT_SHADER\nin vec3 v_x;\nout vec4 c;\n"
        "void main() { c = vec4(v_x, 1.0); }\n#endif\n")
    with pytest.raises(GpurenderError, match=r"^shader program unlinked does not link: .*v_x"):
        load_program(ctx, "unlinked", search=(tmp_path,))


def test_missing_include_and_cycle(ctx, tmp_path):
    (tmp_path / "lonely.glsl").write_text('#version 330 core\n#include "nowhere.glsl"\n')
    with pytest.raises(GpurenderError, match=r"^shader nowhere\.glsl not found in "):
        load_program(ctx, "lonely", search=(tmp_path,))
    (tmp_path / "loop.glsl").write_text('#version 330 core\n#include "a.glsl"\n')
    (tmp_path / "a.glsl").write_text('#include "b.glsl"\n')
    (tmp_path / "b.glsl").write_text('#include "a.glsl"\n')
    with pytest.raises(GpurenderError, match="include depth"):
        load_program(ctx, "loop", search=(tmp_path,))
