"""Independent subprocesses run side by side: pytest keeps one core busy, CI has two, so a reference run
beside the run under test costs about nothing."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def run_side_by_side(cmds: list[list[str]], env: dict | None = None, cwd: Path | None = None,
                     timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Start every command at once, wait for all (at most `timeout` seconds in total) and return their
    results in order, stdout and stderr as text (kept in files, so no pipe fills up and stalls a run)."""
    with tempfile.TemporaryDirectory() as tmp:
        started: list[tuple[subprocess.Popen, Path, Path]] = []
        try:
            for i, cmd in enumerate(cmds):
                out, err = Path(tmp) / f"{i}.out", Path(tmp) / f"{i}.err"
                with open(out, "wb") as o, open(err, "wb") as e:
                    started.append((subprocess.Popen(cmd, env=env, cwd=cwd, stdout=o, stderr=e), out, err))
            deadline = time.monotonic() + timeout
            for proc, _, _ in started:
                proc.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            for proc, _, _ in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return [subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(errors="replace"),
                                            err.read_text(errors="replace")) for proc, out, err in started]


@contextmanager
def running_beside(cmd: list[str], env: dict, cwd: Path, log: Path, timeout: float = 600) -> Iterator[None]:
    """Run `cmd` while the body runs (e.g. an uninterrupted reference beside a run that the body kills and
    resumes); on leaving, wait for it and check that it succeeded (its stderr goes to `log`)."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert proc.wait(timeout=timeout) == 0, log.read_text(errors="replace")[-3000:]
