"""README.md's Python examples run as written, from any directory.

Convention: the ```python blocks of one section of README.md (everything under one ``## ``
heading, its ``###`` subsections included) form one script, in the order they appear, so a
later block may use what an earlier block of its section made; sections share nothing. Each
section's script runs in a fresh interpreter (``sys.executable -W error``) whose working
directory is an empty temporary directory and whose path holds no source tree (PYTHONPATH
unset): it sees the installed package only, as a user would after ``make install``, and every
file it reads it must have written itself. Shell commands are ```bash blocks (``sh`` also
allowed) and are not run here; the data-flow diagram is a ```text block. What is checked of
them: every ``python -m experiments.NAME`` names a module of the experiments package.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXPERIMENTS = README.parent / "experiments"
LANGUAGES = ("python", "bash", "sh", "text")
TIMEOUT = 600  # seconds per section, against a hang: each takes 1 to 15 s on 2 quiet cores
_FENCE = re.compile(r"^```(\S*)\s*$")


def _blocks(text: str) -> list[tuple[str, str, int, str]]:
    """Every fenced block of `text`: (section heading, language, first line number, code)."""
    blocks, section, lang, start, lines = [], "(top)", None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        fence = _FENCE.match(line)
        if lang is None:
            if fence:
                lang, start, lines = fence.group(1), number, []
            elif line.startswith("## "):
                section = line[3:].strip()
        elif fence and not fence.group(1):
            blocks.append((section, lang, start, "\n".join(lines) + "\n"))
            lang = None
        else:
            lines.append(line)
    if lang is not None:
        raise ValueError(f"README.md: the block opened at line {start} is never closed")
    return blocks


def _sections() -> dict[str, str]:
    """Section heading -> the script of its Python blocks (each block marked by a comment
    naming its README line, so that a traceback points back to it)."""
    scripts: dict[str, str] = {}
    for section, lang, start, code in _blocks(README.read_text()):
        if lang == "python":
            scripts[section] = scripts.get(section, "") + f"# README.md, line {start}\n{code}\n"
    return scripts


SECTIONS = _sections()


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")[:40]


def test_the_parser_reads_sections_and_fences():
    text = (
        "## One\n```python\nx = 1\n```\n```bash\n## not a heading\n```\n"
        "### Sub\n```python\nprint(x)\n```\n## Two\n```text\na\n```\n"
    )
    assert _blocks(text) == [
        ("One", "python", 2, "x = 1\n"),
        ("One", "bash", 5, "## not a heading\n"),
        ("One", "python", 9, "print(x)\n"),
        ("Two", "text", 13, "a\n"),
    ]
    with pytest.raises(ValueError, match="never closed"):
        _blocks("```python\nx = 1\n")


def test_readme_has_python_examples():
    assert len(SECTIONS) >= 3, f"expected the tour's sections, found {list(SECTIONS)}"


def test_every_block_is_labelled_and_python_is_only_in_python_blocks():
    """An unlabelled block, or Python code in a bash block, would escape the test below."""
    for section, lang, start, code in _blocks(README.read_text()):
        where = f"README.md line {start} ({section})"
        assert lang in LANGUAGES, f"{where}: block language {lang!r}, not one of {LANGUAGES}"
        if lang != "python":
            python_like = re.search(r"^\s*(import \w|from [\w.]+ import )", code, re.MULTILINE)
            assert python_like is None, f"{where}: Python code in a {lang or 'plain'} block"


def test_experiment_commands_name_existing_modules():
    commands = []
    for _, lang, start, code in _blocks(README.read_text()):
        if lang in ("bash", "sh"):
            assert "python experiments/" not in code, f"README.md line {start}: use python -m"
            commands += re.findall(r"python -m experiments\.([a-z_][a-z0-9_]*)", code)
    prose = re.findall(r"python -m experiments\.([a-z_][a-z0-9_]*)", README.read_text())
    assert commands, "README.md shows no experiment command"
    for name in set(commands) | set(prose):
        assert (EXPERIMENTS / f"{name}.py").is_file(), f"no module experiments.{name}"


@pytest.mark.parametrize("section", list(SECTIONS), ids=[_slug(s) for s in SECTIONS])
def test_python_examples_run(section, tmp_path):
    script = tmp_path / "readme_example.py"
    script.write_text(SECTIONS[section])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-W", "error", script.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 0, (
        f"README section {section!r} failed:\n{run.stderr[-4000:]}\n--- script ---\n"
        f"{SECTIONS[section]}"
    )
