from __future__ import annotations

from kallos_models.cli import cli
from tests.cli_reference import README, command_paths, render


def test_readme_cli_reference_is_the_real_help_output() -> None:
    text = README.read_text()
    assert render(text) == text, (
        "README.md's CLI reference differs from `kallos-run --help`; "
        "regenerate it with `python -m tests.cli_reference`"
    )


def test_readme_cli_reference_has_a_section_per_subcommand() -> None:
    paths = command_paths(cli)
    assert ("registry", "promote") in paths and ("registry",) in paths
    text = README.read_text()
    for path in paths:
        words = " ".join(path)
        assert f"`kallos-run {words}`" in text and f"$ kallos-run {words} --help" in text, path
