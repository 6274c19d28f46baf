"""The README's examples are what the code takes: every ``xenray`` command line it shows names
one command unambiguously and parses with that command's own arguments (its table, as the CLI
builds its parser), and every Python block compiles. (The integration tests run them.)"""

import argparse
import pathlib
import re
import shlex

import pytest

from cluster.cli.cmdtable import lookup

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == kind]


def _xenray_lines() -> list[str]:
    lines = []
    for body in _blocks("sh"):
        for line in body.splitlines():
            for part in line.split(";"):
                part = part.split(" #")[0].strip()
                if part.startswith("uv run xenray "):
                    lines.append(part[len("uv run xenray "):])
    return lines


def test_readme_shows_xenray_commands():
    assert len(_xenray_lines()) > 15


@pytest.mark.parametrize("line", _xenray_lines())
def test_readme_xenray_line_parses_with_its_commands_own_arguments(line):
    argv = shlex.split(line)
    if argv[0] in ("-v", "--verbose"):
        argv.pop(0)
    spec = lookup(argv[0])  # LookupError if unknown or ambiguous
    parser = argparse.ArgumentParser(prog=f"xenray {spec.name}", exit_on_error=False)
    parser.add_argument("-v", "--verbose", action="store_true")
    for flags, kw in spec.args:
        parser.add_argument(*flags, **kw)
    parser.parse_args(argv[1:])


def test_readme_python_blocks_compile():
    blocks = _blocks("python")
    assert blocks
    for body in blocks:
        compile(body, "README.md", "exec")


@pytest.mark.parametrize("line", ["li", "list --nosuch", "create"])
def test_readme_check_refuses_a_line_the_cli_would_refuse(line):
    with pytest.raises((LookupError, argparse.ArgumentError, SystemExit)):
        test_readme_xenray_line_parses_with_its_commands_own_arguments(line)
