"""The web app's commands: `serve` (a port in use, port 0) and `users` (passwd, enable, no terminal),
and the PostgreSQL the tests and benchmarks start (fast for tests, durable for benchmarks)."""

from __future__ import annotations

import socket
from datetime import timedelta

import httpx
import pytest
from conftest import run_cli
from typer.testing import CliRunner
from web_helpers import PASSWORD, make_store, served

from alignloop.cli.main import app
from alignloop.feedback import open_store

runner = CliRunner()


def invoke(*args: str, stdin: str | None = None):  # noqa: ANN201
    return runner.invoke(app, list(args), input=stdin)


def test_serve_on_a_port_in_use_is_one_line_and_exit_2_before_any_url(tmp_path):
    make_store(tmp_path / "f.db").close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("serve", "--db", str(tmp_path / "f.db"), "--port", str(port), timeout=120)
    assert result.returncode == 2
    assert "http://" not in result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0 and f"port {port}" in result.stderr and "in use" in result.stderr


def test_serve_on_port_0_prints_the_port_it_bound(tmp_path):
    make_store(tmp_path / "f.db").close()
    with served(tmp_path / "f.db", log=tmp_path / "serve.log") as app_:  # reads the port from the printed URL
        login = httpx.post(f"{app_.base}/api/login", json={"name": "ann", "password": PASSWORD})
        assert login.status_code == 200


def test_users_passwd_enable_and_add_without_a_terminal(tmp_path):
    run = str(tmp_path / "run")
    no_terminal = invoke("users", "add", "root", "--admin", "--run", run)
    assert no_terminal.exit_code == 2 and "--password-stdin" in no_terminal.output
    assert no_terminal.output.strip().count("\n") == 0
    assert invoke("users", "add", "root", "--admin", "--run", run, "--password-stdin",
                  stdin=f"{PASSWORD}\n").exit_code == 0
    assert invoke("users", "add", "ann", "--run", run, "--password-stdin", stdin=f"{PASSWORD}\n").exit_code == 0
    with open_store(tmp_path / "run" / "feedback.db") as store:
        ann = store.user_by_name("ann")
        store.create_session(ann.id, "a-session-token", "csrf", timedelta(hours=1))
        old_hash = ann.password_hash

    changed = invoke("users", "passwd", "ann", "--run", run, "--password-stdin", stdin="a new long secret\n")
    assert changed.exit_code == 0 and "1 session(s) signed out" in changed.output
    common = invoke("users", "passwd", "ann", "--run", run, "--password-stdin", stdin="password123\n")
    assert common.exit_code == 2 and "common" in common.output
    assert invoke("users", "passwd", "nobody", "--run", run, "--password-stdin", stdin="a new long secret\n"
                  ).exit_code == 2
    assert invoke("users", "disable", "ann", "--run", run).exit_code == 0
    assert invoke("users", "enable", "ann", "--run", run).exit_code == 0
    with open_store(tmp_path / "run" / "feedback.db") as store:
        ann = store.user_by_name("ann")
        assert ann.active and ann.password_hash != old_hash and store.session_user("a-session-token") is None
    assert "active" in invoke("users", "list", "--run", run).output


@pytest.mark.postgres
def test_benchmarks_get_a_durable_postgresql_and_tests_a_fast_one():
    import psycopg

    from alignloop.feedback import pgtemp

    if pgtemp.unavailable_reason():
        pytest.skip(pgtemp.unavailable_reason())
    for durable, expected in ((True, "on"), (False, "off")):
        with pgtemp.postgres_server("d", durable=durable) as server:
            with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="d") as conn:
                settings = [conn.execute(f"SHOW {name}").fetchone()[0] for name in ("fsync", "synchronous_commit")]
            assert settings == [expected, expected]
            if durable:  # a durable server keeps a commit across a kill -9 and a restart
                with open_store(server.url("d")) as store:
                    store.add_user("kept", None)
                server.kill()
                server.start()
                with open_store(server.url("d")) as store:
                    assert store.user_by_name("kept") is not None
