"""How fast `pocketlm --help` and every command's `--help` answer, against another checkout (e.g. the
commit before lazy imports), interleaved in one run.

    python benchmarks/bench_cli_help.py --baseline /path/to/older/checkout --repeat 5

Reports, per command, the median wall time and CPU time (user + sys of the child: what the command
costs when the machine is busy with other work) and whether torch / transformers were imported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["", "info", "survey", "survey list", "build", "data", "data prepare", "train", "distill", "eval",
            "eval run", "eval icl", "eval kl", "profile", "profile run", "profile landscape", "profile compare",
            "demo"]
PROBE = ("import runpy, sys\nsys.argv = ['pocketlm', *sys.argv[1:]]\ntry:\n"
         "    runpy.run_module('pocketlm.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('HEAVY=' + ','.join(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)")


def run_once(tree: Path, command: str) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, heavy modules imported) of `pocketlm COMMAND --help` in `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *command.split(), "--help"], env=env, cwd=tree,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or "HEAVY=" not in proc.stderr:
        raise RuntimeError(f"{tree}: pocketlm {command} --help failed:\n{proc.stderr[-2000:]}")
    heavy = proc.stderr.rsplit("HEAVY=", 1)[1].strip()
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), heavy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to measure in the same run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    trees = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    samples = {(t, c): [] for t in trees for c in COMMANDS}
    heavy = {}
    for _ in range(args.repeat):  # interleaved: a busy machine slows both alike
        for command in COMMANDS:
            for name, tree in trees.items():
                wall, cpu, heavy[name, command] = run_once(tree, command)
                samples[name, command].append((wall, cpu))
    rows = []
    print(f"{'command':22s}" + "".join(f" {n + ' wall':>14s} {n + ' cpu':>13s}" for n in trees) + "  heavy imports")
    for command in COMMANDS:
        row = {"command": f"pocketlm {command} --help".replace("  ", " ")}
        line = f"{command or '(root)':22s}"
        for name in trees:
            row[f"{name}_wall_s"] = statistics.median(w for w, _ in samples[name, command])
            row[f"{name}_cpu_s"] = statistics.median(c for _, c in samples[name, command])
            row[f"{name}_heavy"] = heavy[name, command]
            line += f" {row[f'{name}_wall_s']:13.2f}s {row[f'{name}_cpu_s']:12.2f}s"
        rows.append(row)
        print(line + "  " + "; ".join(f"{n}: {heavy[n, command] or '-'}" for n in trees))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
