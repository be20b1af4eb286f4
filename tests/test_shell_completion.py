"""Shell completion (issue 13, item 5): the script `pipeline completion bash|zsh` prints is
generated from the parser, so bash completes every command, every flag of each, and the
values of flags and arguments with choices. Checked by running the script in bash."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pipeline.cli import build_parser
from pipeline.shell import Parser, completion_script

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def complete(script: str, *words: str) -> list[str]:
    """COMPREPLY for the command line ``pipeline WORDS`` (the last word being typed)."""
    line = " ".join(f"'{word}'" for word in ("pipeline", *words))
    program = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words)}; _pipeline\n"
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def subcommands(parser: Parser) -> dict[str, Parser]:
    for action in parser.recorded:
        if isinstance(action.choices, dict):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_bash_completes_every_command_and_every_flag() -> None:
    parser = build_parser()
    script = completion_script(parser, "bash")
    commands = subcommands(parser)
    assert set(complete(script, "")) >= set(commands)
    assert "cancel" in complete(script, "ca")
    for name, sub in commands.items():
        flags = {o for action in sub.recorded for o in action.option_strings}
        assert set(complete(script, name, "-")) == flags, name


def test_bash_completes_choices_and_files(tmp_path) -> None:
    script = completion_script(build_parser(), "bash")
    assert complete(script, "export", "--format", "") == ["jsonl", "hf", "csv", "parquet"]
    assert complete(script, "export", "--format", "p") == ["parquet"]
    assert "timed_out" in complete(script, "report", "--state", "")
    assert complete(script, "completion", "") == ["bash", "zsh"]
    (tmp_path / "night.yaml").write_text("name: x\n", encoding="utf-8")
    assert complete(script, "run", f"{tmp_path}/ni") == [f"{tmp_path}/night.yaml"]


def test_zsh_script_is_the_bash_one_through_bashcompinit() -> None:
    zsh = completion_script(build_parser(), "zsh")
    assert "bashcompinit" in zsh
    assert "complete -o filenames -F _pipeline pipeline" in zsh
    with pytest.raises(ValueError, match="no completion for 'fish'"):
        completion_script(build_parser(), "fish")
