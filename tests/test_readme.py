from __future__ import annotations

from tests.cli_reference import README, render


def test_readme_cli_reference_is_the_real_help_output() -> None:
    text = README.read_text()
    assert render(text) == text, (
        "README.md's CLI reference differs from `kallos-run --help`; "
        "regenerate it with `python -m tests.cli_reference`"
    )
