"""Build the README's CLI reference from the real `--help` output.

`python -m tests.cli_reference` rewrites the block in README.md; tests/test_readme.py fails when
the README and the commands drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

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


def reference() -> str:
    parts = ["```text", "$ kallos-run --help", _help([]), "```"]
    for name in sorted(cli.commands):
        parts += [
            "",
            f"### `kallos-run {name}`",
            "",
            "```text",
            f"$ kallos-run {name} --help",
            _help([name]),
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
