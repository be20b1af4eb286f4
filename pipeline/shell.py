"""Shell completion scripts for bash and zsh, generated from the command line's parser, so
every command and flag it knows is completed and none is listed by hand. Options with
``choices`` complete their values; everything else completes file names.

``Parser`` is an ``argparse.ArgumentParser`` that remembers the arguments added to it
(argparse has no public way to list them)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping
from typing import Any

__all__ = ["SHELLS", "Parser", "completion_script"]

SHELLS = ("bash", "zsh")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that records its arguments and subcommands; its subcommands'
    parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorded: list[argparse.Action] = []  # before __init__ adds --help
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.recorded.append(action)
        return action

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.recorded.append(action)
        return action


_BODY = """\
_{fn}() {{
    local cur prev cmd="" i opts words
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break ;; esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W {top} -- "$cur"))
        return
    fi
    case "$cmd" in
{flags}
        *) opts="" words="" ;;
    esac
    case "$cmd $prev" in
{values}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -n "$words" ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _{fn} {prog}
"""


def completion_script(parser: Parser, shell: str) -> str:
    """The script that, sourced by ``shell``, completes ``parser.prog``'s commands, flags
    and flag values. zsh runs the bash one through ``bashcompinit``."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}; one of {', '.join(SHELLS)}")
    prog = parser.prog
    commands = _subcommands(parser)
    flags, values = [], []
    for name, sub in commands.items():
        opts, words = " ".join(_flags(sub)), " ".join(_positional_choices(sub))
        flags.append(
            f"        {shlex.quote(name)}) opts={shlex.quote(opts)} words={shlex.quote(words)} ;;"
        )
        for action in sub.recorded:
            if action.choices is None or not action.option_strings:
                continue
            words = shlex.quote(" ".join(str(choice) for choice in action.choices))
            values += [
                f"        {shlex.quote(f'{name} {option}')}) "
                f'COMPREPLY=($(compgen -W {words} -- "$cur")); return ;;'
                for option in action.option_strings
            ]
    body = _BODY.format(
        fn=prog.replace("-", "_"),
        prog=shlex.quote(prog),
        top=shlex.quote(" ".join([*commands, *_flags(parser)])),
        flags="\n".join(flags),
        values="\n".join(values) or "        '') ;;",
    )
    header = f'# {shell} completion for {prog}: eval "$({prog} completion {shell})"\n'
    if shell == "zsh":
        header += "autoload -U +X bashcompinit && bashcompinit\n"
    return header + body


def _subcommands(parser: Parser) -> dict[str, Parser]:
    for action in parser.recorded:
        if isinstance(action.choices, Mapping):
            return {name: sub for name, sub in action.choices.items() if isinstance(sub, Parser)}
    return {}


def _flags(parser: Parser) -> list[str]:
    return [option for action in parser.recorded for option in action.option_strings]


def _positional_choices(parser: Parser) -> list[str]:
    """The values a positional argument with ``choices`` takes (``completion bash``)."""
    return [
        str(choice)
        for action in parser.recorded
        if not action.option_strings and action.choices is not None
        for choice in action.choices
    ]
