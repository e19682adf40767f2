"""The dev stack's keys and tokens live in `<data_dir>/credentials.json`: created 0600 whatever the
umask, reused on the next start (the same tokens keep working), refused when others can read it."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from embedded_stack_support import cli_env, servers_of, trellis
from gateway_cli_support import start

from trellis_cli import credentials
from trellis_core.embedded import free_port
from trellis_core.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_are_created_0600_whatever_the_umask_and_reused(tmp_path: Path) -> None:
    path = credentials.path_in(tmp_path / "data")
    old = os.umask(0)
    try:
        made = credentials.load_or_create(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert len(made.callback_key) >= 32
    assert made.admin_token
    assert len(base64.b64decode(made.seal_key)) == 32
    assert credentials.load_or_create(path) == made
    updated = credentials.with_tenant_token(made, "default", "tok")
    credentials.save(path, updated)
    assert _mode(path) == 0o600
    assert credentials.load(path) == updated
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temp file left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_credentials_readable_by_others_are_refused_saying_what_to_do(tmp_path: Path, mode: int) -> None:
    path = credentials.path_in(tmp_path)
    credentials.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        credentials.load(path)
    assert f"{path} is readable by others (mode {mode:04o})" in str(refused.value)
    assert f"chmod 600 {path}" in str(refused.value)


def test_unreadable_credentials_say_which_file(tmp_path: Path) -> None:
    path = credentials.path_in(tmp_path)
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"credentials\.json: not the stack's credentials"):
        credentials.load(path)


def test_dev_up_keeps_its_tokens_in_credentials_json_and_reuses_them_on_restart(stack_dir: Path) -> None:
    data = stack_dir / "data"
    first = start(data, stack_dir)
    try:
        saved = json.loads((data / "credentials.json").read_text())
        assert _mode(data / "credentials.json") == 0o600
        assert saved["admin_token"] == first.exports["TRELLIS_ADMIN_TOKEN"]
        assert saved["tenants"] == {"default": first.exports["TRELLIS_TOKEN"]}
    finally:
        _, err = first.stop()
    assert first.proc.returncode == 0, err[-2000:]

    second = start(data, stack_dir)
    try:
        for name in ("TRELLIS_TOKEN", "TRELLIS_ADMIN_TOKEN"):
            assert second.exports[name] == first.exports[name], name
        assert second.exports["TRELLIS_GATEWAY_URL"] != ""
        listed = second.cli("env", "list")
        assert listed.returncode == 0, listed.stderr
    finally:
        second.stop()
    assert json.loads((data / "credentials.json").read_text()) == saved

    (data / "credentials.json").chmod(0o644)
    refused = subprocess.run(
        trellis("dev", "up", "--port", str(free_port())), capture_output=True, text=True, timeout=90,
        env=cli_env(data), cwd=stack_dir, check=False,
    )
    assert refused.returncode == 1
    assert f"{data / 'credentials.json'} is readable by others (mode 0644)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not servers_of(stack_dir)
