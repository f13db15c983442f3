from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aiperimeter.policy.constraints.sql import SQLConstraint

PG = SQLConstraint()
MYSQL = SQLConstraint(dialect="mysql")
SQLITE = SQLConstraint(dialect="sqlite")
TSQL = SQLConstraint(dialect="tsql")
DUCKDB = SQLConstraint(dialect="duckdb")
ORACLE = SQLConstraint(dialect="oracle")
TABLES = SQLConstraint(tables=["orders", "public.customers", "shop.public.items"])
ALLOW = SQLConstraint(allow_functions=["count", "sum", "lower", "now", "string_agg", "pg_sleep"])
WRITES = SQLConstraint(read_only=False, tables=["orders"])


@pytest.mark.parametrize(
    ("constraint", "sql"),
    [
        pytest.param(PG, "SELECT id, total FROM orders WHERE id = 1", id="plain-select"),
        pytest.param(PG, "SELECT 1;", id="one-trailing-semicolon"),
        pytest.param(PG, "SELECT 1; -- done", id="trailing-comment"),
        pytest.param(PG, "SELECT 1 --; DROP TABLE t", id="line-comment-hides-drop"),
        pytest.param(PG, "SELECT 1 /* ; DROP TABLE t */", id="block-comment-hides-drop"),
        pytest.param(PG, "SELECT 1 /* /* */ ; DROP TABLE t */", id="nested-comment-hides-drop"),
        pytest.param(PG, "SELECT * FROM orders WHERE note = 'DROP TABLE x'", id="drop-inside-string"),
        pytest.param(PG, "SELECT $$; DROP TABLE t; $$", id="drop-inside-dollar-quotes"),
        pytest.param(PG, "SELECT 'it''s; DELETE FROM t'", id="doubled-quote"),
        pytest.param(PG, "SELECT 1 UNION SELECT 2 INTERSECT SELECT 3", id="set-operations"),
        pytest.param(PG, "VALUES (1, 'a'), (2, 'b')", id="values"),
        pytest.param(PG, "WITH recent AS (SELECT * FROM orders) SELECT count(*) FROM recent", id="with-select"),
        pytest.param(PG, "TABLE orders", id="table-statement"),
        pytest.param(PG, "(SELECT 1)", id="parenthesised"),
        pytest.param(PG, "EXPLAIN SELECT * FROM orders", id="explain-select"),
        pytest.param(PG, "EXPLAIN ANALYZE SELECT * FROM orders", id="explain-analyze-select"),
        pytest.param(PG, "EXPLAIN (ANALYZE, FORMAT JSON) SELECT 1", id="explain-options"),
        pytest.param(PG, "SELECT x::int, CAST(a AS text), CASE WHEN a THEN 1 END FROM t", id="casts-and-case"),
        pytest.param(PG, "SELECT * FROM t WHERE a LIKE '%\\_%'", id="backslash-not-before-quote"),
        pytest.param(MYSQL, "EXPLAIN SELECT * FROM orders", id="mysql-explain"),
        pytest.param(MYSQL, "SELECT * FROM orders -- (sleep(1))", id="mysql-comment"),
        pytest.param(SQLITE, "SELECT a FROM t WHERE a GLOB 'x*'", id="sqlite-glob-operator"),
    ],
)
def test_read_only_queries_are_allowed(constraint: SQLConstraint, sql: str) -> None:
    assert constraint.check(sql) is None


@pytest.mark.parametrize(
    ("constraint", "sql", "reason"),
    [
        # one statement
        pytest.param(PG, "SELECT 1; DROP TABLE t", "2 statements; one is allowed", id="stacked"),
        pytest.param(PG, "SELECT ';'; DROP TABLE t", "2 statements", id="stacked-after-string"),
        pytest.param(PG, "SELECT 1;\nSELECT 2;\nSELECT 3", "3 statements", id="three-statements"),
        pytest.param(PG, "EXPLAIN SELECT 1; DROP TABLE t", "2 statements", id="stacked-after-explain"),
        pytest.param(PG, "", "empty SQL", id="empty"),
        pytest.param(PG, " ;\n", "empty SQL", id="only-semicolon"),
        pytest.param(PG, "-- nothing", "empty SQL", id="only-comment"),
        pytest.param(PG, "SELECT (1", "unparsable SQL", id="unbalanced"),
        pytest.param(PG, "SELECT 'open", "unparsable SQL", id="unterminated-string"),
        pytest.param(PG, "SELECT " + "(" * 3000 + "1" + ")" * 3000, "unparsable SQL", id="deep-nesting"),
        # statement kind
        pytest.param(PG, "INSERT INTO t VALUES (1)", "statement is Insert; only SELECT is allowed", id="insert"),
        pytest.param(PG, "UPDATE t SET a = 1", "statement is Update", id="update"),
        pytest.param(PG, "delete from t", "statement is Delete", id="lower-case-delete"),
        pytest.param(PG, "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", "Merge", id="merge"),
        pytest.param(PG, "CREATE TABLE t (a int)", "statement is Create", id="create"),
        pytest.param(PG, "DROP TABLE t", "statement is Drop", id="drop"),
        pytest.param(PG, "ALTER TABLE t ADD c int", "statement is Alter", id="alter"),
        pytest.param(PG, "TRUNCATE t", "statement is TruncateTable", id="truncate"),
        pytest.param(PG, "GRANT ALL ON t TO u", "statement is Grant", id="grant"),
        pytest.param(PG, "SET search_path = evil", "statement is Set", id="set"),
        pytest.param(PG, "COPY (SELECT 1) TO PROGRAM 'id'", "statement is Copy", id="copy-to-program"),
        pytest.param(PG, "COPY t FROM '/etc/passwd'", "statement is Copy", id="copy-from-file"),
        pytest.param(PG, "DO $$ BEGIN PERFORM 1; END $$", "statement DO is not supported", id="do-block"),
        pytest.param(PG, "LOCK TABLE t", "statement LOCK is not supported", id="lock"),
        pytest.param(PG, "VACUUM", "statement VACUUM is not supported", id="vacuum"),
        pytest.param(PG, "CALL p()", "statement CALL is not supported", id="call"),
        pytest.param(PG, "LISTEN x", "statement is not understood", id="listen-parsed-as-expression"),
        pytest.param(PG, "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", "contains Delete", id="write-cte"),
        pytest.param(
            PG,
            "SELECT * FROM (WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x) s",
            "contains Insert",
            id="write-cte-in-subquery",
        ),
        pytest.param(
            PG,
            "SELECT 1 WHERE EXISTS (WITH d AS (UPDATE t SET a = 1 RETURNING 1) SELECT * FROM d)",
            "contains Update",
            id="write-cte-in-where",
        ),
        pytest.param(PG, "SELECT * INTO t2 FROM t", "SELECT ... INTO is not allowed", id="select-into"),
        pytest.param(PG, "SELECT * FROM t FOR UPDATE", "locking clause", id="for-update"),
        pytest.param(PG, "SELECT * FROM t WHERE a IN (SELECT a FROM u FOR SHARE)", "locking", id="for-share-nested"),
        pytest.param(PG, "EXPLAIN ANALYZE DELETE FROM t", "statement is Delete", id="explain-analyze-delete"),
        pytest.param(PG, "EXPLAIN DELETE FROM t", "statement is Delete", id="explain-delete"),
        pytest.param(PG, "EXPLAIN (ANALYZE) UPDATE t SET a = 1", "statement is Update", id="explain-options-update"),
        pytest.param(PG, "EXPLAIN", "EXPLAIN without a statement", id="explain-alone"),
        pytest.param(PG, "EXPLAIN EXPLAIN SELECT 1", "EXPLAIN is not supported", id="explain-explain"),
        pytest.param(MYSQL, "EXPLAIN DELETE FROM t", "statement is Delete", id="mysql-explain-delete"),
        pytest.param(MYSQL, "DESCRIBE t", "statement is Describe", id="mysql-describe-table"),
        pytest.param(SQLITE, "ATTACH DATABASE '/tmp/x.db' AS x", "statement is Attach", id="sqlite-attach"),
        pytest.param(SQLITE, "PRAGMA writable_schema = 1", "statement is Pragma", id="sqlite-pragma"),
        pytest.param(TSQL, "EXEC xp_cmdshell 'id'", "statement is Execute", id="tsql-exec"),
        # functions
        pytest.param(PG, "SELECT pg_read_file('/etc/passwd')", "function 'pg_read_file' is denied", id="pg-read-file"),
        pytest.param(PG, "SELECT PG_READ_FILE('/etc/passwd')", "'pg_read_file' is denied", id="upper-case"),
        pytest.param(PG, "SELECT Pg_Read_File('/etc/passwd')", "'pg_read_file' is denied", id="mixed-case"),
        pytest.param(PG, "SELECT \"pg_read_file\"('/etc/passwd')", "'pg_read_file' is denied", id="quoted-name"),
        pytest.param(PG, "SELECT pg_catalog.pg_read_file('x')", "'pg_catalog.pg_read_file' is denied", id="qualified"),
        pytest.param(PG, "SELECT pg_catalog.\"pg_read_file\"('x')", "is denied", id="qualified-quoted"),
        pytest.param(PG, "SELECT pg_read_file /* x */ ('/etc/passwd')", "is denied", id="comment-before-paren"),
        pytest.param(PG, "SELECT * FROM pg_ls_dir('/')", "'pg_ls_dir' is denied", id="table-function"),
        pytest.param(PG, "SELECT * FROM pg_catalog.pg_ls_dir('/')", "is denied", id="qualified-table-function"),
        pytest.param(PG, "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)", "'dblink' is denied", id="dblink"),
        pytest.param(PG, "SELECT lo_import('/etc/passwd')", "'lo_import' is denied", id="lo-import"),
        pytest.param(PG, "SELECT 1 WHERE set_config('role', 'admin', false) = ''", "'set_config'", id="in-where"),
        pytest.param(PG, "SELECT current_setting('data_directory')", "'current_setting'", id="current-setting"),
        pytest.param(PG, "SELECT nextval('s')", "'nextval' is denied", id="sequence-write"),
        pytest.param(PG, "SELECT query_to_xml('delete from t', true, true, '')", "'query_to_xml'", id="runs-text"),
        pytest.param(PG, "SELECT 1 UNION SELECT pg_sleep(10)", "'pg_sleep' is denied", id="sleep-in-union"),
        pytest.param(PG, "EXPLAIN ANALYZE SELECT pg_sleep(10)", "'pg_sleep' is denied", id="sleep-in-explain"),
        pytest.param(
            PG, "SELECT U&\"pg\\005fread\\005ffile\"('/etc/passwd')", "Unicode-escaped", id="unicode-escaped-name"
        ),
        pytest.param(MYSQL, "SELECT LOAD_FILE('/etc/passwd')", "'load_file' is denied", id="mysql-load-file"),
        pytest.param(MYSQL, "SELECT `sleep`(10)", "'sleep' is denied", id="mysql-backticks"),
        pytest.param(MYSQL, "SELECT 1 --(sleep(10))", "'sleep' is denied", id="mysql-dash-dash-not-comment"),
        pytest.param(MYSQL, "SELECT BENCHMARK(1000000, MD5('a'))", "'benchmark' is denied", id="mysql-benchmark"),
        pytest.param(MYSQL, "SELECT 1 /*!50000 , sleep(10) */", "executable comment", id="mysql-executable-comment"),
        pytest.param(MYSQL, "SELECT 'a\\', sleep(10) -- '", "backslash before a quote", id="mysql-escaped-quote"),
        pytest.param(PG, "SELECT 'a\\' -- ', pg_sleep(1)", "backslash before a quote", id="pg-escaped-quote"),
        pytest.param(SQLITE, "SELECT load_extension('/tmp/x.so')", "'load_extension'", id="sqlite-load-extension"),
        pytest.param(SQLITE, "SELECT writefile('/tmp/x', 'y')", "'writefile' is denied", id="sqlite-writefile"),
        pytest.param(TSQL, "SELECT * FROM OPENROWSET('a', 'b', 'c')", "'openrowset' is denied", id="tsql-openrowset"),
        pytest.param(TSQL, "SELECT [xp_cmdshell]('id')", "'xp_cmdshell' is denied", id="tsql-brackets"),
        pytest.param(DUCKDB, "SELECT * FROM read_csv('/etc/passwd')", "'read_csv' is denied", id="duckdb-read-csv"),
        pytest.param(DUCKDB, "SELECT * FROM '/etc/passwd'", "string literal", id="duckdb-file-as-table"),
        pytest.param(
            ORACLE, "SELECT utl_http.request('http://x') FROM dual", "'utl_http.request'", id="oracle-package"
        ),
        # not strings
        pytest.param(PG, 5, "SQL must be a string", id="int"),
        pytest.param(PG, None, "SQL must be a string", id="none"),
        pytest.param(PG, b"SELECT 1", "SQL must be a string", id="bytes"),
        pytest.param(PG, ["SELECT 1"], "SQL must be a string", id="list"),
    ],
)
def test_attacks_are_denied(constraint: SQLConstraint, sql: Any, reason: str) -> None:
    got = constraint.check(sql)
    assert got is not None and reason in got


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        pytest.param("SELECT * FROM orders", None, id="listed"),
        pytest.param("SELECT * FROM ORDERS o", None, id="case-insensitive"),
        pytest.param('SELECT * FROM "orders"', None, id="quoted-as-listed"),
        # PostgreSQL folds unquoted names to lowercase; a quoted name is another table unless spelt as listed
        pytest.param(
            'SELECT * FROM "Orders"', "table 'Orders' is not allowed", id="quoted-other-case-is-another-table"
        ),
        pytest.param("SELECT * FROM public.customers", None, id="qualified-entry-qualified-ref"),
        pytest.param("SELECT * FROM shop.public.items", None, id="three-part-entry"),
        pytest.param("SELECT * FROM customers", "table 'customers' is not allowed", id="qualified-entry-bare-ref"),
        pytest.param("SELECT * FROM public.orders", "table 'public.orders' is not allowed", id="bare-entry-qualified"),
        pytest.param("SELECT * FROM other.public.items", "'other.public.items'", id="other-catalog"),
        pytest.param("SELECT 1 UNION SELECT passwd FROM pg_shadow", "table 'pg_shadow' is not allowed", id="union"),
        pytest.param("SELECT * FROM orders o JOIN pg_authid a ON true", "'pg_authid'", id="join"),
        pytest.param("SELECT * FROM orders WHERE id IN (SELECT id FROM pg_shadow)", "'pg_shadow'", id="subquery"),
        pytest.param("SELECT (SELECT passwd FROM pg_shadow LIMIT 1)", "'pg_shadow'", id="scalar-subquery"),
        pytest.param("WITH pg_shadow AS (SELECT 1) SELECT * FROM pg_shadow", None, id="cte-is-not-a-table"),
        pytest.param(
            'WITH "PG_SHADOW" AS (SELECT 1) SELECT * FROM pg_shadow', "'pg_shadow'", id="cte-quoted-other-case"
        ),
        pytest.param(
            "SELECT * FROM (WITH pg_shadow AS (SELECT 1) SELECT * FROM pg_shadow) x, pg_shadow",
            "'pg_shadow'",
            id="cte-out-of-scope",
        ),
        pytest.param(
            "WITH pg_shadow AS (SELECT * FROM pg_shadow) SELECT * FROM pg_shadow", "'pg_shadow'", id="cte-body-self"
        ),
        pytest.param(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r", None, id="recursive"
        ),
        pytest.param("WITH a AS (SELECT * FROM orders), b AS (SELECT * FROM a) SELECT * FROM b", None, id="cte-chain"),
        pytest.param("WITH b AS (SELECT * FROM a), a AS (SELECT 1) SELECT * FROM b", "table 'a'", id="cte-forward"),
        pytest.param("SELECT * FROM generate_series(1, 3)", None, id="table-function-is-not-a-table"),
        pytest.param("SELECT * FROM unnest(ARRAY[1, 2])", None, id="unnest"),
    ],
)
def test_table_allowlist(sql: str, reason: str | None) -> None:
    got = TABLES.check(sql)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        pytest.param("SELECT count(*), lower(a), now() FROM t", None, id="listed"),
        pytest.param("SELECT COUNT(*) FROM t", None, id="case-insensitive"),
        pytest.param("SELECT x::int, CAST(a AS int) FROM t WHERE EXISTS (SELECT 1)", None, id="syntax-not-calls"),
        pytest.param("SELECT sum(a) OVER (PARTITION BY b), count(*) FILTER (WHERE a) FROM t", None, id="windows"),
        pytest.param("SELECT string_agg(a, ',') FROM t", None, id="own-parser-listed"),
        pytest.param("SELECT upper(a) FROM t", "function 'upper' is not allowed", id="typed-not-listed"),
        pytest.param("SELECT my_udf(1)", "function 'my_udf' is not allowed", id="anonymous-not-listed"),
        pytest.param("SELECT substring(a FROM 1 FOR 2) FROM t", "'substring' is not allowed", id="own-parser"),
        pytest.param("SELECT myschema.count(a) FROM t", "'myschema.count' is not allowed", id="qualified"),
        pytest.param("SELECT * FROM evil(1)", "'evil' is not allowed", id="table-function"),
        pytest.param("SELECT pg_sleep(1)", "'pg_sleep' is denied", id="deny-wins"),
    ],
)
def test_function_allowlist(sql: str, reason: str | None) -> None:
    got = ALLOW.check(sql)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def test_operator_deny_list_replaces_the_default() -> None:
    constraint = SQLConstraint(deny_functions=["my_schema.secret_fn", "leak"])
    assert constraint.check("SELECT pg_sleep(1)") is None
    assert constraint.check("SELECT leak(1)") == "function 'leak' is denied"
    assert constraint.check("SELECT other.leak(1)") == "function 'other.leak' is denied"
    assert constraint.check("SELECT secret_fn(1)") is None  # a qualified entry needs its qualifier
    assert constraint.check("SELECT My_Schema.Secret_Fn(1)") == "function 'my_schema.secret_fn' is denied"


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        pytest.param("INSERT INTO orders VALUES (1)", None, id="insert-listed-table"),
        pytest.param("DELETE FROM orders WHERE id = 1", None, id="delete-listed-table"),
        pytest.param("INSERT INTO pg_authid VALUES (1)", "table 'pg_authid' is not allowed", id="insert-unlisted"),
        pytest.param("UPDATE orders SET a = pg_read_file('x')", "'pg_read_file' is denied", id="denied-function"),
        pytest.param("DO $$ BEGIN END $$", "DO is not supported; it is not understood", id="command"),
        pytest.param("LISTEN x", "statement is not understood", id="expression"),
    ],
)
def test_writes_when_not_read_only(sql: str, reason: str | None) -> None:
    got = WRITES.check(sql)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"dialect": "postgresql"}, "unknown SQL dialect 'postgresql'; use one of", id="dialect"),
        pytest.param({"dialect": ""}, "unknown SQL dialect", id="empty-dialect"),
        pytest.param({"tables": ["a.b.c.d"]}, "more than three parts", id="four-part-table"),
        pytest.param({"tables": ["public."]}, "is not a name", id="empty-part"),
        pytest.param({"deny_functions": [""]}, "is not a name", id="empty-function"),
        pytest.param({"allow_functions": ["a..b"]}, "is not a name", id="empty-function-part"),
        pytest.param({"read_only": "maybe"}, "read_only", id="not-a-bool"),
        pytest.param({"readonly": True}, "Extra inputs are not permitted", id="unknown-field"),
    ],
)
def test_load_time_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        SQLConstraint(**fields)
    assert message in str(error.value)


def test_dialect_names_are_case_insensitive() -> None:
    assert SQLConstraint(dialect="MySQL").dialect == "mysql"


def test_reasons_and_logs_never_hold_the_query(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-live-4f9a8b7c6d5e4f3a2b1c"
    caplog.set_level(logging.DEBUG)
    for sql in (
        f"DO $$ BEGIN PERFORM '{secret}'; END $$",
        f"INSERT INTO t VALUES ('{secret}')",  # noqa: S608 (an attack on purpose)
        f"SELECT pg_read_file('{secret}')",
        f"SELECT '{secret}'; DROP TABLE t",
        f"SELECT '{secret}",
    ):
        reason = PG.check(sql)
        assert reason is not None and secret not in reason
    assert secret not in caplog.text


def test_long_names_are_truncated_in_reasons() -> None:
    reason = TABLES.check("SELECT * FROM " + "x" * 500)
    assert reason is not None and len(reason) < 120


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="SELECT FROMWHINSRUPDA();,.'\"$`/*-!\\#&U\n01xy", max_size=120))
def test_check_never_raises(sql: str) -> None:
    reason = PG.check(sql)
    assert reason is None or isinstance(reason, str)
    assert MYSQL.check(sql) is None or isinstance(MYSQL.check(sql), str)
