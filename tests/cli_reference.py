"""Build the README's CLI reference from the real `--help` output.

Every command gets a section, a group's subcommands too (`### kallos-run registry`, then
`#### kallos-run registry list` ...). `python -m tests.cli_reference` rewrites the block in
README.md; tests/test_readme.py fails when the README and the commands drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from kallos_models.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"


def _help(args: list[str]) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], prog_name="kallos-run", terminal_width=100)
    if result.exit_code != 0:
        raise RuntimeError(result.output)
    return result.output.rstrip()


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command under ``group`` as its words after `kallos-run`, a group before its own
    subcommands, each level in name order."""
    paths: list[tuple[str, ...]] = []
    for name in sorted(group.commands):
        command = group.commands[name]
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


def reference() -> str:
    parts = ["```text", "$ kallos-run --help", _help([]), "```"]
    for path in command_paths(cli):
        words = " ".join(path)
        parts += [
            "",
            f"{'#' * (2 + len(path))} `kallos-run {words}`",
            "",
            "```text",
            f"$ kallos-run {words} --help",
            _help(list(path)),
            "```",
        ]
    return "\n".join(parts)


def render(readme_text: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme_text):
        raise RuntimeError(f"README.md lacks the {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{reference()}\n{END}", readme_text)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
