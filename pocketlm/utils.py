"""Small shared helpers: atomic files and folders, bounded YAML, output checks, seeding.

Every artifact pocketlm writes goes through `atomic_path` (one file) or `atomic_dir` (a folder built
beside its destination and swapped in whole): a crash leaves the old artifact or the new one, never a
mix. Temporaries carry the writer's pid, so the next write to the same place removes those a dead
process left behind. Files get the permissions the umask allows (not mkstemp's 0600) and are fsynced,
with their folder, before they replace anything.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths in one atomic step


def cache_root() -> Path:
    """pocketlm's cache folder: $POCKETLM_CACHE, else ~/.cache/pocketlm (trained fixtures, calibration, kernels)."""
    return Path(os.environ.get("POCKETLM_CACHE", Path.home() / ".cache" / "pocketlm"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the data itself was synced
        pass
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries that dead processes left beside `path` (ours are `.NAME.PID-*.tmp`).

    If a folder swap was interrupted between its two renames (`path` gone, the old folder parked as
    `.NAME.PID-old.tmp`), the old folder is put back first. Returns what was removed."""
    path = Path(path)
    removed: list[Path] = []
    stem = f".{path.name}."
    for cand in sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(str(path.parent)),
                                                               glob.escape(stem) + "*.tmp"))):
        pid = cand.name[len(stem):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        if cand.name.endswith("-old.tmp") and not os.path.lexists(path):
            os.rename(cand, path)  # the old artifact, whole: the new one never arrived
            continue
        shutil.rmtree(cand, ignore_errors=True) if cand.is_dir() and not cand.is_symlink() else cand.unlink()
        removed.append(cand)
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash inside the block leaves `path` untouched (the old file or nothing), never half written.
    The file is fsynced before the rename and its folder after; its mode follows the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~_umask())
            _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the finished folder `tmp` at `path`; an old `path` ends up at `tmp` (removed by the caller)."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
    elif not _exchange(tmp, path):  # two renames; clean_stale_temporaries repairs a crash between them
        parked = path.with_name(f"{_temp_prefix(path)}old.tmp")
        os.rename(path, parked)
        os.rename(tmp, path)
        os.rename(parked, tmp)
    _fsync(path.parent)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for f in files:
            _fsync(os.path.join(folder, f))
        _fsync(folder)


@contextmanager
def atomic_dir(path: str | Path, artifact_files: Iterable[str] = (), what: str = "artifact") -> Iterator[Path]:
    """Yield an empty folder beside `path`; when the block succeeds it replaces `path` whole.

    The old folder stays in place, complete, until one atomic swap; a crash at any moment leaves
    either the old or the new folder at `path` (the next write cleans the leftovers). An existing,
    non-empty `path` holding none of `artifact_files` is refused: it is not an earlier `what`,
    and replacing it would delete someone's files.
    """
    path = Path(path)
    check_replaceable(path, artifact_files, what)
    tmp = temp_dir_beside(path)
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def temp_dir_beside(path: str | Path) -> Path:
    """A new empty folder `.NAME.PID-*.tmp` beside `path` (after removing dead writers' leftovers), to build
    an artifact in before `replace_dir` moves it to `path`; the caller removes it if the build fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def replace_dir(tmp: str | Path, path: str | Path) -> None:
    """Move the finished folder `tmp` to `path` in one swap (fsynced first); an old `path` is deleted after."""
    tmp, path = Path(tmp), Path(path)
    for folder, _, files in os.walk(tmp):  # mkstemp'd files inside keep their 0600 otherwise
        for f in files:
            p = os.path.join(folder, f)
            if os.stat(p).st_mode & 0o777 == 0o600:
                os.chmod(p, 0o666 & ~_umask())
    _fsync_tree(tmp)
    _swap_in(tmp, path)
    if os.path.lexists(tmp):  # now the old folder
        shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(path: str | Path, artifact_files: Iterable[str] = (), what: str = "artifact") -> None:
    """Refuse an output folder that `atomic_dir` could not replace: a file, or a non-empty folder holding
    none of `artifact_files` (not an earlier `what`: replacing it would delete someone's files)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another output folder")
    names = set(os.listdir(path))
    if names and artifact_files and not names & set(artifact_files):
        raise FileExistsError(f"{path} holds files that are not a {what} ({', '.join(sorted(names)[:3])}); "
                              "choose a new or empty output folder (it would be replaced whole)")


def check_writable(path: str | Path, option: str, artifact_files: Iterable[str] = (), what: str = "") -> Path:
    """Refuse, before any work, an output `path` whose folder cannot be written (`option` names it, e.g. --out);
    with `artifact_files`, also an existing folder that is not an earlier `what` (see check_replaceable)."""
    path = Path(path)
    if artifact_files:
        check_replaceable(path, artifact_files, what)
    probe = path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise FileExistsError(f"{option} {path}: {probe} is a file, not a folder; choose another {option}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: {probe} is not writable; choose another {option}")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: not writable; choose another {option}")
    return path


def available_memory() -> int:
    """Bytes the OS could give this process now (MemAvailable; the physical size where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


MAX_YAML_BYTES = 1 << 20  # a recipe or task file is a page of text
MAX_YAML_NODES = 100_000  # nodes after expanding aliases: a "billion laughs" file expands to ~10^9


def load_yaml(text: str | bytes, where: str, loader: Any = None, error: type[Exception] = ValueError) -> Any:
    """yaml.load with a safe loader, refusing files over MAX_YAML_BYTES or aliases that expand past
    MAX_YAML_NODES nodes (checked on the node graph, before any Python object is built)."""
    import yaml

    loader = loader or yaml.SafeLoader
    if len(text) > MAX_YAML_BYTES:
        raise error(f"{where}: {len(text)} bytes; a YAML file here is at most {MAX_YAML_BYTES}")
    try:
        inst = loader(text)
        try:
            node = inst.get_single_node()
            if node is None:
                return None
            sizes: dict[int, int] = {}

            def size(n: Any) -> int:
                if id(n) in sizes:
                    return sizes[id(n)]
                sizes[id(n)] = MAX_YAML_NODES + 1  # a cycle counts as too large
                if isinstance(n, yaml.MappingNode):
                    total = 1 + sum(size(k) + size(v) for k, v in n.value)
                elif isinstance(n, yaml.SequenceNode):
                    total = 1 + sum(size(v) for v in n.value)
                else:
                    total = 1
                sizes[id(n)] = min(total, MAX_YAML_NODES + 1)
                return sizes[id(n)]

            if size(node) > MAX_YAML_NODES:
                raise error(f"{where}: expands to more than {MAX_YAML_NODES} YAML nodes (aliases repeated "
                            "inside aliases?); write the values out")
            return inst.construct_document(node)
        finally:
            inst.dispose()
    except yaml.YAMLError as e:
        raise error(f"{where}: not valid YAML ({' '.join(str(e).split())})") from e
    except RecursionError as e:
        raise error(f"{where}: nested too deeply to be a recipe or task file") from e


def read_json(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """The JSON value in file `path`; any way the text is not JSON is one `error` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise error(f"{path}: JSON nested too deeply to be a config or manifest") from e


def check_finite_weights(module: Any, where: str | Path, error: type[Exception] = ValueError) -> None:
    """Refuse a module whose float weights hold NaN or infinity: every score, quantized code or exported
    tensor computed from them would be NaN, and look like a real result."""
    import torch

    for name, t in module.state_dict().items():
        # min and max are NaN if any value is, and +-inf if one is: one fused pass, ~20x faster than isfinite
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(t))).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise error(f"{where}: tensor {name!r} holds {bad} NaN/inf value(s) of {t.numel()}; the weights are "
                        "corrupt or diverged in training: use an earlier checkpoint")


def dataclass_from_dict(cls: type[T], d: dict[str, Any], error: type[Exception] = ValueError) -> T:
    """Build dataclass `cls` from `d`, refusing unknown keys (a typo must not pass silently)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise error(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    return cls(**d)
