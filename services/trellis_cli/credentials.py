"""The embedded stack's secrets, kept in `<data_dir>/credentials.json` (mode 0600) so a restart
keeps the same seal key (sealed values stay readable), callback key and tokens."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import msgspec

from trellis_core.errors import ConfigError
from trellis_core.sealed import new_master_key

FILE_NAME = "credentials.json"


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """`tenants` maps a tenant to the admin token the stack bootstrapped it with."""

    seal_key: str  # base64 of 32 bytes: AES-GCM key of sensitive values at rest
    callback_key: str  # HMAC key of approval callback URLs
    admin_token: str  # the platform admin's token (`POST /v1/tenants`)
    tenants: dict[str, str] = {}


_decode = msgspec.json.Decoder(Credentials).decode


def generate() -> Credentials:
    return Credentials(
        seal_key=new_master_key(),
        callback_key=secrets.token_urlsafe(48),
        admin_token="trellis-admin-" + secrets.token_urlsafe(32),
    )


def path_in(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def load(path: Path) -> Credentials | None:
    """The saved credentials, None when there are none yet. ConfigError when the file is readable by
    others (its keys would be everyone's) or unreadable: it says what to do."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): it holds the stack's keys and tokens; "
            f"`chmod 600 {path}` (and consider them leaked: delete it to generate new ones, "
            "which makes values sealed with the old key unreadable)"
        )
    try:
        return _decode(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: not the stack's credentials ({exc}); move it away to start afresh") from None


def save(path: Path, credentials: Credentials) -> None:
    """Write the file whole and 0600 from its creation (never a moment readable by others), then
    rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, msgspec.json.format(msgspec.json.encode(credentials), indent=2) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def load_or_create(path: Path) -> Credentials:
    """The saved credentials, or new ones saved now."""
    found = load(path)
    if found is not None:
        return found
    created = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    save(path, created)
    return created


def with_tenant_token(credentials: Credentials, tenant: str, token: str) -> Credentials:
    return msgspec.structs.replace(credentials, tenants={**credentials.tenants, tenant: token})
