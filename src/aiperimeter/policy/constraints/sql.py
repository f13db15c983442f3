"""SQL arguments, judged on the tree sqlglot parses in the operator's dialect: statement kind, tables, functions.

Names are compared case-insensitively. A function is named as it is written (`pg_catalog.pg_read_file` has the parts
`pg_catalog` and `pg_read_file`); a denied name matches a call whose trailing parts equal it, an allowed name only a
call with exactly its parts. Anything sqlglot cannot parse, or parses as an opaque `Command`, is denied.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, PrivateAttr, field_validator
from sqlglot import Dialects, Token, TokenType, exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError

from aiperimeter.policy.constraints.base import Constraint

# Functions that reach outside the query's tables or outside the database: files, programs, the network, server
# settings, other sessions, large objects, sequences (writes from a SELECT), deliberate delays (timing side channels
# and denial of service), and functions that run SQL given as text (which would escape every check here).
DEFAULT_DENY_FUNCTIONS: tuple[str, ...] = (
    # PostgreSQL: server files and directories
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_ls_logdir", "pg_ls_waldir",
    "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync",
    "pg_logdir_ls",
    # PostgreSQL: large objects (lo_import/lo_export read and write server files)
    "lo_import", "lo_export", "lo_get", "lo_put", "lo_create", "lo_creat", "lo_unlink", "lo_open", "lo_from_bytea",
    "lowrite", "loread",
    # PostgreSQL: other databases, other sessions, server state and settings
    "dblink", "dblink_exec", "dblink_connect", "dblink_connect_u", "dblink_send_query", "dblink_open", "dblink_fetch",
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_promote", "pg_switch_wal",
    "pg_create_restore_point", "pg_backup_start", "pg_backup_stop", "pg_start_backup", "pg_stop_backup",
    "pg_create_logical_replication_slot", "pg_create_physical_replication_slot", "pg_drop_replication_slot",
    "pg_logical_emit_message", "pg_notify", "pg_advisory_lock", "pg_advisory_xact_lock",
    "set_config", "current_setting",
    "nextval", "setval",
    # PostgreSQL: run SQL given as text, or read any table by name (escaping the table allowlist)
    "query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema", "cursor_to_xml", "table_to_xml",
    "table_to_xml_and_xmlschema", "table_to_xmlschema", "schema_to_xml", "schema_to_xml_and_xmlschema",
    "database_to_xml", "database_to_xml_and_xmlschema", "ts_stat",
    # delays
    "pg_sleep", "pg_sleep_for", "pg_sleep_until", "sleep", "benchmark", "dbms_lock.sleep",
    # MySQL / MariaDB: files, user-defined command execution, locks
    "load_file", "sys_exec", "sys_eval", "sys_get", "sys_set", "get_lock", "master_pos_wait", "source_pos_wait",
    # SQLite (and its shell's extension functions)
    "load_extension", "fts3_tokenizer", "readfile", "writefile", "edit", "fsdir",
    # SQL Server
    "xp_cmdshell", "xp_dirtree", "xp_fileexist", "xp_subdirs", "xp_regread", "xp_regwrite", "openrowset",
    "opendatasource", "openquery", "sp_oacreate", "sp_oamethod",
    # DuckDB: local and remote files
    "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json", "read_json_auto", "read_ndjson",
    "read_json_objects", "read_text", "read_blob", "glob", "sniff_csv", "getenv",
    # Oracle: network and inter-session packages
    "utl_http.request", "utl_inaddr.get_host_address", "utl_inaddr.get_host_name", "dbms_pipe.receive_message",
    "dbms_ldap.init", "httpuritype",
    # ClickHouse: runs a script on the server
    "executable",
)  # fmt: skip

# Function-call syntax for what is not a function: always allowed by `allow_functions` (still subject to deny).
_SYNTAX_CALLS = frozenset({"cast", "try_cast", "safe_cast", "exists", "array", "row"})

# Statements (and parts of one) that change data, schema, session or server, or that sqlglot did not understand.
_WRITE_NODES: tuple[type[exp.Expr], ...] = tuple(
    node
    for name in (
        "DML", "DDL", "Insert", "Update", "Delete", "Merge", "Copy", "Create", "Drop", "Alter", "TruncateTable",
        "Command", "Set", "Grant", "Revoke", "Attach", "Detach", "Pragma", "Transaction", "Commit", "Rollback", "Use",
        "Install", "Analyze", "Comment", "Show", "Describe", "Execute", "LoadData", "Cache", "Uncache", "Refresh",
        "Kill", "Export", "Declare", "Put", "Get",
    )
    if isinstance(node := getattr(exp, name, None), type)
)  # fmt: skip
_READ_ROOTS = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)
_EXPLAIN_WORDS = frozenset({"ANALYZE", "ANALYSE", "VERBOSE", "QUERY", "PLAN", "EXTENDED", "PARTITIONS"})
_STRINGS = frozenset(t for t in TokenType if t.name.endswith("STRING"))
_ESCAPABLE_STRINGS = _STRINGS - {TokenType.HEREDOC_STRING}
# Tokens that never name a function, even when an opening parenthesis follows them.
_NOT_NAMES = _STRINGS | {
    TokenType.L_PAREN, TokenType.R_PAREN, TokenType.L_BRACKET, TokenType.R_BRACKET, TokenType.COMMA, TokenType.DOT,
    TokenType.NUMBER, TokenType.SEMICOLON,
}  # fmt: skip
_ESCAPED_QUOTE = re.compile(r"(?<!\\)(?:\\\\)*\\['\"]")  # an odd run of backslashes, then a quote
_DIALECTS = tuple(sorted(d.value for d in Dialects if d.value))

Name = tuple[str, ...]


def _shown(text: str) -> str:
    """A name as it may appear in a reason: printable and at most 64 characters."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= 64 else clean[:61] + "..."


def _parse_names(values: list[str], field: str) -> frozenset[Name]:
    names: set[Name] = set()
    for value in values:
        parts = tuple(part.strip().lower() for part in value.split("."))
        if not all(parts):
            raise ValueError(f"{field}: {value!r} is not a name or a dotted name")
        names.add(parts)
    return frozenset(names)


class SQLConstraint(Constraint):
    """One SQL statement, read-only by default, optionally limited to listed tables and functions."""

    dialect: str = "postgres"
    read_only: bool = True
    tables: list[str] | None = None
    deny_functions: list[str] = Field(default_factory=lambda: list(DEFAULT_DENY_FUNCTIONS))
    allow_functions: list[str] | None = None

    _judge: _Judge = PrivateAttr()

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, value: str) -> str:
        name = value.strip().lower()
        if name not in _DIALECTS:
            raise ValueError(f"unknown SQL dialect {value!r}; use one of {', '.join(_DIALECTS)}")
        return name

    @field_validator("tables")
    @classmethod
    def _valid_tables(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for name in _parse_names(value, "tables"):
                if len(name) > 3:
                    raise ValueError(f"tables: {'.'.join(name)!r} has more than three parts")
        return value

    @field_validator("deny_functions", "allow_functions")
    @classmethod
    def _valid_functions(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            _parse_names(value, "functions")
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._judge = _Judge(self)

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return "SQL must be a string"
        try:
            return self._judge.judge(value)
        except Exception:  # parser errors, recursion on deep nesting, node shapes this code did not foresee
            return "unparsable SQL"


class _Judge:
    """A constraint compiled for judging: plain attributes, since pydantic's private attributes are slow to read."""

    def __init__(self, constraint: SQLConstraint) -> None:
        self.read_only = constraint.read_only
        self._dialect = Dialect.get_or_raise(constraint.dialect)
        self._function_parsers = frozenset(name.lower() for name in self._dialect.parser_class.FUNCTION_PARSERS)
        self._tables = None if constraint.tables is None else _parse_names(constraint.tables, "tables")
        self._deny: dict[str, list[Name]] = {}  # denied names by their last part
        for name in _parse_names(constraint.deny_functions, "deny_functions"):
            self._deny.setdefault(name[-1], []).append(name)
        allow = constraint.allow_functions
        self._allow = None if allow is None else _parse_names(allow, "allow_functions")

    # -- parsing -----------------------------------------------------------------------------------------------

    def _parse(self, sql: str) -> tuple[list[Token], list[exp.Expr]] | str:
        try:
            tokens = self._dialect.tokenize(sql)
            # error_message_context=0: sqlglot logs statements it falls back on; the log must not hold the argument
            parsed = self._dialect.parser(error_message_context=0).parse(tokens, sql)
        except SqlglotError:
            return "unparsable SQL"
        statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
        if not statements:
            return "empty SQL"
        if len(statements) > 1:
            return f"{len(statements)} statements; one is allowed"
        if reason := _ambiguous_tokens(tokens, sql):
            return reason
        return [t for t in tokens if t.token_type != TokenType.SEMICOLON], statements

    def judge(self, sql: str, explained: bool = False) -> str | None:
        if not sql.strip():
            return "empty SQL"
        parsed = self._parse(sql)
        if isinstance(parsed, str):
            return parsed
        tokens, (statement,) = parsed
        if isinstance(statement, exp.Command):
            return self._judge_command(statement, tokens, explained)
        if isinstance(statement, exp.Describe) and isinstance(statement.this, exp.Query | exp.DML):
            if explained:
                return "EXPLAIN of EXPLAIN is not allowed"
            # MySQL's EXPLAIN [ANALYZE] <statement>: ANALYZE runs it, so the statement is judged like any other
            statement = statement.this
        writes: list[exp.Expr] = []
        tables: list[exp.Table] = []
        functions: list[exp.Func] = []
        for node in statement.walk():
            kind = _kind_of(type(node))
            if kind == _WRITE:
                writes.append(node)
            elif kind == _TABLE and isinstance(node, exp.Table):
                tables.append(node)
            elif kind == _FUNCTION and isinstance(node, exp.Func):
                functions.append(node)
        return (
            self._judge_kind(statement, writes)
            or self._judge_tables(tables, tokens)
            or self._judge_functions(functions, tokens)
        )

    def _judge_command(self, statement: exp.Command, tokens: list[Token], explained: bool) -> str | None:
        keyword = str(statement.this).upper()
        if keyword != "EXPLAIN" or explained:
            verb = "only SELECT is allowed" if self.read_only else "it is not understood"
            return f"statement {_shown(keyword)} is not supported; {verb}"
        # sqlglot keeps the rest of an EXPLAIN as raw text: skip its options and judge the statement it explains
        # (EXPLAIN ANALYZE executes it; without ANALYZE it must be acceptable all the same).
        rest = tokens[1].text if len(tokens) > 1 else ""
        inner = self._dialect.tokenize(rest)
        i = 0
        if inner and inner[0].token_type == TokenType.L_PAREN:
            depth = 0
            for i, token in enumerate(inner):  # noqa: B007 (i is read after the loop)
                depth += {TokenType.L_PAREN: 1, TokenType.R_PAREN: -1}.get(token.token_type, 0)
                if depth == 0:
                    break
            i += 1
        while i < len(inner):
            word = inner[i].text.upper()
            if word in _EXPLAIN_WORDS:
                i += 1
            elif word == "FORMAT" and i + 2 < len(inner) and inner[i + 1].token_type == TokenType.EQ:
                i += 3
            else:
                break
        if i >= len(inner):
            return "EXPLAIN without a statement"
        start = inner[i].start
        return self.judge(rest[start:], explained=True)

    # -- statement kind ----------------------------------------------------------------------------------------

    def _judge_kind(self, statement: exp.Expr, writes: list[exp.Expr]) -> str | None:
        if not self.read_only:
            if isinstance(statement, exp.Condition | exp.Alias) and not isinstance(statement, _READ_ROOTS):
                return "statement is not understood"
            if any(isinstance(node, exp.Command) for node in writes):
                return "statement contains a part that is not understood"
            return None
        if not isinstance(statement, _READ_ROOTS):
            if isinstance(statement, exp.Condition | exp.Alias):  # LISTEN x parses as the expression `LISTEN AS x`
                return "statement is not understood; only SELECT is allowed"
            return f"statement is {type(statement).__name__}; only SELECT is allowed"
        for node in writes:
            if isinstance(node, exp.Into):
                return "SELECT ... INTO is not allowed; only SELECT is allowed"
            if isinstance(node, exp.Lock):
                return "locking clause (FOR UPDATE/SHARE) is not allowed"
            return f"statement contains {type(node).__name__}; only SELECT is allowed"
        return None

    # -- tables --------------------------------------------------------------------------------------------------

    def _judge_tables(self, tables: list[exp.Table], tokens: list[Token]) -> str | None:
        by_start = {t.start: t for t in tokens} if tables else {}
        for table in tables:
            this = table.this
            if this is None or isinstance(this, exp.Func):
                continue  # a ROWS FROM (...) list, or a table-valued function: judged as a function
            if isinstance(this, exp.Identifier):
                written = by_start.get(this.meta.get("start", -1))
                if written is not None and written.token_type in _STRINGS:
                    # DuckDB reads FROM '<file>'; sqlglot turns the string into a quoted identifier
                    return "table given as a string literal is not allowed"
            if self._tables is None:
                continue
            parts = table.parts
            if not parts or not all(isinstance(p, exp.Identifier) for p in parts):
                return "table reference is not a plain name"
            # Unquoted names fold (the allowlist is lowercase); a quoted name is exact: "ORDERS" is not orders.
            name = tuple(p.name if p.args.get("quoted") else p.name.lower() for p in parts)
            if name in self._tables:
                continue
            if len(parts) == 1 and self._is_cte(table, parts[0]):
                continue
            return f"table {_shown('.'.join(name))!r} is not allowed"
        return None

    def _is_cte(self, table: exp.Table, identifier: exp.Expr) -> bool:
        """Whether an unqualified table reference names a CTE in scope: one of an enclosing WITH's (for a CTE's own
        body, only the CTEs before it, or all of them under RECURSIVE), compared as the dialect compares names."""
        wanted = self._identifier_key(identifier)
        child: exp.Expr = table
        node = table.parent
        while node is not None:
            if isinstance(node, exp.With):
                ctes = list(node.expressions)
                if node.args.get("recursive"):
                    visible = ctes
                else:
                    visible = ctes[: next((i for i, c in enumerate(ctes) if c is child), 0)]
                if any(self._cte_key(c) == wanted for c in visible):
                    return True
            else:
                with_ = node.args.get("with_") or node.args.get("with")
                if (
                    isinstance(with_, exp.With)
                    and with_ is not child
                    and any(self._cte_key(c) == wanted for c in with_.expressions)
                ):
                    return True
            child, node = node, node.parent
        return False

    def _cte_key(self, cte: exp.Expr) -> str | None:
        alias = cte.args.get("alias")
        identifier = alias.this if isinstance(alias, exp.TableAlias) else None
        return self._identifier_key(identifier) if isinstance(identifier, exp.Identifier) else None

    def _identifier_key(self, identifier: exp.Expr) -> str:
        return self._dialect.normalize_identifier(identifier.copy()).name

    # -- functions -----------------------------------------------------------------------------------------------

    def _judge_functions(self, functions: list[exp.Func], tokens: list[Token]) -> str | None:
        index = {t.start: i for i, t in enumerate(tokens)} if functions else {}
        called: list[tuple[Name, bool]] = []  # (name as written, whether allow_functions must list it)
        # Every name followed by "(" in the token stream: the names as written, whatever sqlglot makes of them. Most
        # are also function nodes below; those with a parser of their own (STRING_AGG, SUBSTRING ... FROM, TRIM)
        # keep no position in the tree, so allow_functions reads them here.
        for i in range(len(tokens) - 1):
            if tokens[i + 1].token_type == TokenType.L_PAREN and tokens[i].token_type not in _NOT_NAMES:
                name = _token_chain(tokens, i)
                called.append((name, name[-1] in self._function_parsers))
        for node in functions:
            if isinstance(node, exp.Anonymous):
                called.append((_ast_chain(node, node.name.lower()), True))
                continue
            written = index.get(node.meta.get("start", -1)) if node.meta else None
            if written is not None:
                called.append((_ast_chain(node, tokens[written].text.lower()), True))
            # typed nodes are also known by their other names (SUBSTR is SUBSTRING): any of them may be denied
            called.extend(((name.lower(),), False) for name in node.sql_names())
        for name, _ in called:
            if any(name[-len(denied) :] == denied for denied in self._deny.get(name[-1], ())):
                return f"function {_shown('.'.join(name))!r} is denied"
        if self._allow is not None:
            for name, listed in called:
                if listed and name not in self._allow and not (len(name) == 1 and name[0] in _SYNTAX_CALLS):
                    return f"function {_shown('.'.join(name))!r} is not allowed"
        return None


def _ambiguous_tokens(tokens: list[Token], sql: str) -> str | None:
    """Text that the database may read differently from sqlglot, so that what is judged is not what runs."""
    bang, backslash, amp = "!" in sql, "\\" in sql, "&" in sql
    for i, token in enumerate(tokens):
        # MySQL and MariaDB run the text of /*! ... */ and /*M! ... */ comments; sqlglot skips it as a comment
        if bang and any(c.startswith(("!", "M!")) for c in token.comments):
            return "executable comment (/*! ... */) is not allowed"
        # A backslash before a quote ends a string or not depending on server settings (MySQL NO_BACKSLASH_ESCAPES,
        # PostgreSQL standard_conforming_strings): the rest of the statement could be code or string.
        if (
            backslash
            and token.token_type in _ESCAPABLE_STRINGS
            and _ESCAPED_QUOTE.search(sql, token.start + 1, token.end + 1)
        ):
            return "backslash before a quote in a string literal is ambiguous; double the quote instead"
        # PostgreSQL's U&"..." identifiers decode escapes (U&"pg\005fsleep" is pg_sleep); sqlglot reads U & "..."
        if (
            amp
            and token.token_type == TokenType.AMP
            and 0 < i < len(tokens) - 1
            and tokens[i - 1].text in ("U", "u")
            and tokens[i - 1].end + 1 == token.start
            and tokens[i + 1].start == token.end + 1
        ):
            return 'Unicode-escaped identifier (U&"...") is not allowed'
    return None


_WRITE, _TABLE, _FUNCTION = 1, 2, 3
_CLASS_KINDS: dict[type, int] = {}


def _kind_of(cls: type) -> int:
    """What a node class matters for here (0: nothing), cached: isinstance against every write class is slow."""
    kind = _CLASS_KINDS.get(cls)
    if kind is None:
        if issubclass(cls, (*_WRITE_NODES, exp.Into, exp.Lock)):
            kind = _WRITE
        elif issubclass(cls, exp.Table):
            kind = _TABLE
        elif issubclass(cls, exp.Func):
            kind = _FUNCTION
        else:
            kind = 0
        _CLASS_KINDS[cls] = kind
    return kind


def _token_chain(tokens: list[Token], i: int) -> Name:
    """The dotted name ending at token i, as written (`pg_catalog . "pg_read_file"`)."""
    parts = [tokens[i].text.lower()]
    while i >= 2 and tokens[i - 1].token_type == TokenType.DOT:
        i -= 2
        parts.append(tokens[i].text.lower())
    return tuple(reversed(parts))


def _ast_chain(node: exp.Expr, name: str) -> Name:
    """A function's name with the qualifiers sqlglot keeps beside it (a Dot for a call, a Table for FROM f())."""
    parent = node.parent
    if isinstance(parent, exp.Dot) and parent.expression is node:
        return (*_dotted(parent.this), name)
    if isinstance(parent, exp.Table) and parent.this is node:
        return (*(p.name.lower() for p in (parent.args.get("catalog"), parent.args.get("db")) if p), name)
    return (name,)


def _dotted(node: exp.Expr) -> Name:
    if isinstance(node, exp.Identifier | exp.Var):
        return (node.name.lower(),)
    if isinstance(node, exp.Column):
        return tuple(p.name.lower() for p in node.parts)
    if isinstance(node, exp.Dot):
        return (*_dotted(node.this), *_dotted(node.expression))
    return ("?",)  # a qualifier that is not a name: never equal to an allowed name
