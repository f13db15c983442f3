"""Shell command arguments, judged on the syntax tree bashlex builds, after quote removal.

A string is parsed as bash would read it; a list of strings is an argv array that no shell sees (one command, no
pipes, no expansion). Either way every command's name must be listed in `commands` and its arguments must satisfy
that command's rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import bashlex
import re2
from pydantic import Field, PrivateAttr, field_validator

from aiperimeter.policy.constraints.base import Constraint

# Programs that run code or another program named in their arguments: listing one would allow every command.
# Shells, language interpreters, privilege and process wrappers, editors with command modes, and shell builtins that
# run text (eval, source, trap) or change what later commands in the same line see (export, set, alias).
_RUNS_CODE = frozenset(
    {
        "sh", "bash", "zsh", "dash", "ksh", "mksh", "pdksh", "csh", "tcsh", "fish", "ash", "busybox", "toybox",
        "irb", "deno", "bun", "expect", "osascript", "powershell", "rscript", "julia", "awk", "gawk", "mawk", "nawk",
        "sed", "vi", "vim", "nvim", "ex", "ed", "emacs",
        "env", "xargs", "parallel", "watch", "sudo", "su", "doas", "pkexec", "runuser", "sg", "newgrp", "nohup",
        "timeout", "nice", "ionice", "chrt", "taskset", "stdbuf", "setsid", "flock", "chroot", "unshare", "nsenter",
        "strace", "ltrace", "gdb", "valgrind", "script", "time", "systemd-run", "ssh", "npx",
        "exec", "eval", "command", "builtin", "source", ".", "trap", "export", "declare", "typeset", "readonly",
        "local", "set", "shopt", "alias", "enable", "hash",
    }
)  # fmt: skip
# Versioned interpreter names: python3, python3.12, perl5.36, php8.2, lua5.4, node18 ...
_VERSIONED = re.compile(r"(?:python|pypy|jython|perl|ruby|jruby|php|lua|luajit|node|nodejs|tclsh|wish|pwsh)[0-9.\-]*")
# Options that make an otherwise plain program run another one.
_FIND_ACTIONS = frozenset({"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"})
_GIT_RUNS = ("--upload-pack", "--receive-pack", "--exec", "--config-env")
_TAR_RUNS = ("--to-command", "--use-compress-program", "--checkpoint-action", "--info-script", "--new-volume-script",
             "--rsh-command")  # fmt: skip
_RSYNC_RUNS = ("--rsh", "--rsync-path")
_HEREDOCS = frozenset({"<<", "<<-", "<<<"})
_COMPOUND = {
    "(": "subshells are not allowed",
    "{": "command groups are not allowed",
}
_DENIED_KINDS = {
    "commandsubstitution": "command substitution is not allowed",
    "processsubstitution": "process substitution is not allowed",
    "parameter": "parameter expansion is not allowed",
    "assignment": "variable assignment is not allowed",
    "function": "function definitions are not allowed",
    "heredoc": "heredocs are not allowed",
    "reservedword": "reserved words are not allowed",
    "if": "compound commands are not allowed",
    "for": "compound commands are not allowed",
    "while": "compound commands are not allowed",
    "until": "compound commands are not allowed",
}
# A line of plain words: characters that are never special to bash, single spaces between words. Bash reads such a
# line one way only, as its words split on the spaces, so it needs no parser (bashlex costs about 0.5 ms a line; a
# property test holds this reading to bashlex's). Reserved words and a first word with `=` (an assignment) still go
# to the parser.
_PLAIN_LINE = re.compile(r"[A-Za-z0-9_./,:@%+=-]+(?: [A-Za-z0-9_./,:@%+=-]+)*")
_RESERVED = frozenset(
    {"if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while", "until", "do", "done", "in",
     "function", "time", "coproc"}
)  # fmt: skip
_PLAIN_KINDS = frozenset({"list", "pipeline", "command", "word", "tilde", "operator", "pipe", "redirect", "compound"})


def _shown(text: str) -> str:
    """A name as it may appear in a reason: printable and at most 64 characters."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= 64 else clean[:61] + "..."


def _compile(patterns: list[str], field: str) -> list[Any]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re2.compile(pattern))
        except Exception as error:  # re2.error; its message names what is wrong with the pattern
            raise ValueError(f"{field}: {pattern[:64]!r} is not a valid RE2 pattern ({error})") from None
    return compiled


class CommandRule(Constraint):
    """What one listed command may be given.

    `args`: RE2 patterns; every argument must fullmatch one (None: any argument). An argument with an unquoted glob
    (`*`, `?`, `[`), brace expansion (`{`) or a leading `~` is denied unless one of these patterns matched it, since
    bash replaces it with file names that can themselves be options (`--checkpoint-action=exec=...`).
    `deny_args`: RE2 patterns; an argument in which any is found (searched, not fullmatched) is denied.
    `max_args`: the most arguments allowed, not counting the command name.
    `allow_interpreter`: shells, interpreters, wrappers that run another program (env, xargs, sudo, timeout ...),
    and plain programs given an option that runs one (find -exec, git -c, tar --to-command, rsync -e) are denied
    even when listed, since allowing them allows every command. Set this to true to allow them for this command.
    """

    args: list[str] | None = None
    deny_args: list[str] = Field(default_factory=list)
    max_args: int | None = None
    allow_interpreter: bool = False

    _args: list[Any] | None = PrivateAttr(default=None)
    _deny_args: list[Any] = PrivateAttr(default_factory=list)

    @field_validator("args", "deny_args")
    @classmethod
    def _valid_patterns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            _compile(value, "pattern")
        return value

    @field_validator("max_args")
    @classmethod
    def _non_negative(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("max_args must be 0 or more")
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._args = None if self.args is None else _compile(self.args, "args")
        self._deny_args = _compile(self.deny_args, "deny_args")

    def check(self, value: Any) -> str | None:
        """Judges an argv list on its own, the command name first (the name itself is not checked here)."""
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            return "argv must be a non-empty list of strings"
        return self.judge(value, [False] * len(value))

    def judge(self, argv: list[str], expanded: list[bool]) -> str | None:
        """`expanded[i]`: whether argv[i] was written with an unquoted glob, brace or tilde expansion."""
        name = _shown(argv[0])
        allowed, denied = self._args, self._deny_args  # read once: pydantic's private attributes are slow to read
        if not self.allow_interpreter and (reason := _runs_code(argv)):
            return f"command '{name}' {reason}; allow_interpreter is not set"
        args = argv[1:]
        if self.max_args is not None and len(args) > self.max_args:
            return f"'{name}' takes at most {self.max_args} arguments"
        for number, arg in enumerate(args, start=1):
            if any(pattern.search(arg) for pattern in denied):
                return f"argument {number} of '{name}' is denied"
            if allowed is None:
                if expanded[number]:
                    return f"argument {number} of '{name}' has an unquoted glob, brace or tilde expansion"
            elif not any(pattern.fullmatch(arg) for pattern in allowed):
                return f"argument {number} of '{name}' does not match the allowed patterns"
        return None


def _runs_code(argv: list[str]) -> str | None:
    """Why this command line runs another program or code given in its arguments, or None."""
    base = argv[0].rsplit("/", 1)[-1].lower()
    args = argv[1:]
    if base in _RUNS_CODE or _VERSIONED.fullmatch(base):
        return "runs other programs or code"
    if base == "find" and any(a in _FIND_ACTIONS for a in args):
        return "with -exec, -ok, -delete or -fprint runs or changes more than it lists"
    if base == "git" and _git_runs(args):
        return "with these options runs other programs"
    if base == "tar" and any(
        a.startswith(_TAR_RUNS) or ((i == 0 or a.startswith("-")) and not a.startswith("--") and ("I" in a or "F" in a))
        for i, a in enumerate(args)
    ):
        return "with these options runs other programs"
    if base == "rsync" and any(
        a.startswith(_RSYNC_RUNS) or (a.startswith("-") and not a.startswith("--") and "e" in a) for a in args
    ):
        return "with -e or --rsh runs other programs"
    if base == "zip" and any(a in ("-TT", "--unzip-command") or a.startswith("--unzip-command=") for a in args):
        return "with -TT runs other programs"
    return None


def _git_runs(args: list[str]) -> bool:
    i = 0
    while i < len(args) and args[i].startswith("-"):  # options before the subcommand
        if args[i].startswith(("-c", "--exec-path", "--config-env")):
            return True
        i += 2 if args[i] in ("-C", "--git-dir", "--work-tree", "--namespace") else 1
    subcommand = args[i] if i < len(args) else ""
    rest = args[i + 1 :]
    if any(a.startswith(_GIT_RUNS) for a in rest):
        return True
    if subcommand in ("clone", "fetch", "pull", "ls-remote", "archive") and "-u" in rest:
        return True
    if subcommand == "rebase" and any(a == "-x" or a.startswith("-x") for a in rest):
        return True
    return subcommand in ("filter-branch", "difftool", "mergetool") or (
        (subcommand, rest[:1]) in (("submodule", ["foreach"]), ("bisect", ["run"]))
    )


def _has_expansion(raw: str) -> bool:
    """Whether a word as written has a glob, brace or tilde expansion outside quotes (quotes and backslashes make
    these characters literal)."""
    quote = ""
    i = 0
    while i < len(raw):
        c = raw[i]
        if quote == "'":
            quote = "" if c == "'" else quote
        elif c == "\\":
            i += 1
        elif quote == '"':
            quote = "" if c == '"' else quote
        elif c in "'\"":
            quote = c
        elif c in "*?[{" or (c == "~" and i == 0):
            return True
        i += 1
    return False


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for value in vars(node).values():
        if isinstance(value, bashlex.ast.node):
            yield from _walk(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, bashlex.ast.node):
                    yield from _walk(item)


class ShellConstraint(Constraint):
    """A shell command line (a string) or an argv array (a list of strings).

    Always denied in a string: command and process substitution, parameter expansion (in double quotes too),
    assignments (`LD_PRELOAD=x ls`), subshells, groups, functions, compound commands, heredocs and here-strings,
    and anything bashlex cannot parse. Pipes, sequences (`;`, `&&`, `||`, `&`, newlines) and redirects are denied
    unless allowed; an allowed redirect may still not go to /dev/tcp or /dev/udp (bash opens a connection there),
    and otherwise may read or write any file the tool's process can.
    """

    commands: dict[str, CommandRule]
    allow_pipes: bool = False
    allow_sequences: bool = False
    allow_redirects: bool = False

    @field_validator("commands")
    @classmethod
    def _valid_names(cls, value: dict[str, CommandRule]) -> dict[str, CommandRule]:
        for name in value:
            if not name or "\x00" in name or any(c.isspace() for c in name):
                raise ValueError(f"command name {name[:64]!r} must be non-empty, without spaces or NUL")
        return value

    def check(self, value: Any) -> str | None:
        try:
            if isinstance(value, list):
                if not value or not all(isinstance(a, str) for a in value):
                    return "argv must be a non-empty list of strings"
                if any("\x00" in a for a in value):
                    return "NUL byte in argv"
                return self._judge_argv(value, [False] * len(value))
            if not isinstance(value, str):
                return "command must be a string or a list of strings"
            return self._judge_line(value)
        except Exception:  # bashlex raises many kinds (ParsingError, NotImplementedError, IndexError ...)
            return "unparsable shell"

    def _judge_line(self, line: str) -> str | None:
        if "\x00" in line:
            return "NUL byte in command"
        if not line.strip():
            return "empty command"
        plain = line.strip(" ")
        if _PLAIN_LINE.fullmatch(plain):
            argv = plain.split(" ")
            if "=" not in argv[0] and argv[0] not in _RESERVED:
                return self._judge_argv(argv, [False] * len(argv))
        try:
            trees = bashlex.parse(line)
        except Exception:
            return "unparsable shell"
        if len(trees) > 1 and not self.allow_sequences:
            return "command sequences are not allowed"
        commands = []
        for tree in trees:
            for node in _walk(tree):
                kind = node.kind
                if kind in _DENIED_KINDS:
                    return _DENIED_KINDS[kind]
                if kind not in _PLAIN_KINDS:
                    return f"shell syntax '{_shown(kind)}' is not allowed"
                if kind == "compound":
                    first = node.list[0] if node.list else None
                    return _COMPOUND.get(getattr(first, "word", ""), "compound commands are not allowed")
                if kind == "pipe" and not self.allow_pipes:
                    return "pipes are not allowed"
                if kind == "operator" and not self.allow_sequences:
                    return "command sequences are not allowed"
                if kind == "redirect" and (reason := self._judge_redirect(node)):
                    return reason
                if kind == "command":
                    commands.append(node)
        for command in commands:
            words = [part for part in command.parts if part.kind == "word"]
            if not words:
                return "command without a name"
            argv = [word.word for word in words]
            expanded = [
                _has_expansion(line[word.pos[0] : word.pos[1]]) or any(p.kind == "tilde" for p in word.parts)
                for word in words
            ]
            if reason := self._judge_argv(argv, expanded):
                return reason
        return None

    def _judge_redirect(self, node: Any) -> str | None:
        if node.type in _HEREDOCS:
            return "heredocs are not allowed"
        if not self.allow_redirects:
            return "redirects are not allowed"
        target = getattr(node, "output", None)
        word = getattr(target, "word", "")
        if isinstance(word, str) and word.startswith(("/dev/tcp/", "/dev/udp/")):
            return "redirects to /dev/tcp or /dev/udp are not allowed"
        return None

    def _judge_argv(self, argv: list[str], expanded: list[bool]) -> str | None:
        if expanded[0]:
            return "command name has a glob, brace or tilde expansion"
        rule = self.commands.get(argv[0])
        if rule is None:
            return f"command '{_shown(argv[0])}' is not allowed"
        return rule.judge(argv, expanded)
