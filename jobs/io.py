"""Files: atomic writes, YAML and JSON reading with errors that name the file, run records.

Every file mpo writes goes through ``atomic_write``: the content is written to a hidden temporary
file in the same folder and renamed over the target, so a killed process leaves either the old
file or the new one, never a partial one. Stale temporaries of earlier killed writers are removed.

``run_record`` is the one writer of a run folder's ``run.json`` header (``mpo sweep`` and
``mpo eval`` both use it): what ran (the command as the user typed it, with the program named
``mpo``, never the virtual environment's absolute path), where (hardware), and with which code
(mpo version, git commit, library versions).

Torch-free and Ray-free: ``analysis`` uses it too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from jobs.errors import MpoError

PathLike = str | os.PathLike[str]


def atomic_write(path: PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file next to ``path``, then rename it to ``path``.

    The temporary name carries this host and process id; temporaries left by dead processes of
    this host are removed (another host's, on shared storage, are left alone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = _HOST
    for stale in path.parent.glob(f".{path.name}.tmp-{host}-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{host}-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_HOST = "".join(c if c.isalnum() else "_" for c in platform.node()) or "host"


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(path: PathLike, *, folder: bool, what: str = "output",
                   create: bool = True) -> Path:
    """Make sure ``path`` (a folder, or a file's folder) can be written before any work is
    done: created if missing (``create=False``: the nearest folder that exists is probed, and
    nothing is left behind), probed with a small file; an ``MpoError`` naming the path and the
    reason otherwise (a file where a folder is wanted, no permission, a read-only or full
    disk)."""
    path = Path(path)
    target = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise MpoError(f"{what} {path}: a file, not a folder; give a folder")
    if not folder and path.is_dir():
        raise MpoError(f"{what} {path}: a folder, not a file; give a file name")
    if not create:
        target = next(p for p in (target.absolute(), *target.absolute().parents) if p.exists())
        if not target.is_dir():
            raise MpoError(f"{what} {path}: {target} is a file, not a folder; give a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".mpo-write-check-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise MpoError(f"{what} {path}: cannot write there ({err.strerror or err}); choose another "
                       "place") from None
    return path


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (sha256; md5 where a published checksum is one)."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    """Pretty JSON (sorted keys; non-JSON values through ``str``)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl_atomic(path: PathLike, records: Iterable[Any]) -> Path:
    """One JSON object per line (sorted keys)."""
    return write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_text(path: PathLike, *, error: type[MpoError] = MpoError, what: str = "file") -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: cannot read the {what}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: cannot read the {what}: a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read the {what} ({err})") from None


def load_yaml(path: PathLike, *, error: type[MpoError] = MpoError, what: str = "file") -> Any:
    """The parsed YAML (or JSON) content of ``path``; ``error`` names the file and the problem."""
    text = read_text(path, error=error, what=what)
    try:
        # libyaml's loader where PyYAML has it: the same documents, ~10x faster than pure Python
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None


def read_json(path: PathLike, *, error: type[MpoError] = MpoError, what: str = "file") -> Any:
    text = read_text(path, error=error, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from None


# ----------------------------------------------------------------------------------------------
# Run records


def git_commit() -> str | None:
    """The commit of the mpo checkout this code runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def versions(packages: Sequence[str] = ("torch", "ray")) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def hardware(device: Any = None) -> dict[str, Any]:
    """Machine, CPU count, platform, and the device (and GPU name) when one is given."""
    hw: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(),
                          "platform": platform.platform()}
    if device is not None:
        hw["device"] = str(device)
        if str(device).startswith("cuda"):
            import torch

            hw["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return hw


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as the user typed it: ``mpo`` and its arguments, shell-quoted."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["mpo", *args])


def run_record(name: str, *, command: str | None = None, device: Any = None) -> dict[str, Any]:
    """The header of a run folder's ``run.json``."""
    return {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mpo_version": _mpo_version(),
        "git_commit": git_commit(),
        "versions": versions(),
        "hardware": hardware(device),
        "command": command if command is not None else command_line(),
    }


def _mpo_version() -> str:
    from jobs import __version__

    return __version__
