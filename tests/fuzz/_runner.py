"""Runs fuzz harnesses as libFuzzer does from the command line, a few at a time, for ``test_fuzz.py``.

Every selected harness is started when the first fuzz test asks for its result, on a pool of
``PHYSARUM_FUZZ_JOBS`` workers (default 2: CI's machine has two cores, and pytest runs nothing else
meanwhile), each for ``PHYSARUM_FUZZ_SECONDS`` (default 10) on a temporary copy of its corpus: a run
never writes into the repository. Thirteen harnesses take about 80 s of wall time that way, against
about 140 s one after another.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
#: Every harness: ``fuzz_<name>.py`` with its seed corpus in ``corpus/<name>/``.
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))
SECONDS_VARIABLE = "PHYSARUM_FUZZ_SECONDS"
JOBS_VARIABLE = "PHYSARUM_FUZZ_JOBS"
DEFAULT_SECONDS = 10
DEFAULT_JOBS = 2
#: Time a run may take beyond its budget (start-up, loading the corpus, the last input) before the
#: test gives up on it: a harness that ignores its budget is a failure too.
GRACE_SECONDS = 120


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    value = int(raw)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {raw!r}")
    return value


@dataclass
class FuzzRun:
    """One harness run: its exit code, output and the figures libFuzzer printed."""

    name: str
    seconds: int
    returncode: int
    output: str
    workdir: Path
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return f"{sys.executable} tests/fuzz/fuzz_{self.name}.py {self.workdir / 'corpus'}"


_STAT = re.compile(r"^stat::(\w+):\s+(\d+)$", re.M)
_DONE = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)/")


def run_harness(name: str, seconds: int, workdir: Path) -> FuzzRun:
    """Fuzz ``name`` for ``seconds`` on a copy of its corpus in ``workdir`` (crash inputs go there too)."""
    corpus = workdir / "corpus"
    shutil.copytree(CORPUS / name, corpus)
    command = [
        sys.executable,
        str(HERE / f"fuzz_{name}.py"),
        str(corpus),
        f"-max_total_time={seconds}",
        "-print_final_stats=1",
        f"-artifact_prefix={workdir}/",
    ]
    try:
        done = subprocess.run(
            command,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=seconds + GRACE_SECONDS,
        )
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
        output = (
            out.decode(errors="replace") if isinstance(out, bytes) else out
        ) + "\n(killed: over its budget)"
        returncode = -1
    stats = {key: int(value) for key, value in _STAT.findall(output)}
    done_lines = _DONE.findall(output)
    if done_lines:
        cov, ft, corp = done_lines[-1]
        stats.update(cov=int(cov), ft=int(ft), corpus=int(corp))
    return FuzzRun(name, seconds, returncode, output, workdir, stats)


class FuzzPool:
    """Starts the selected harnesses on first use and hands each test its run."""

    def __init__(self, names: list[str], workdir: Path) -> None:
        self.seconds = _positive_int(SECONDS_VARIABLE, DEFAULT_SECONDS)
        self.jobs = _positive_int(JOBS_VARIABLE, DEFAULT_JOBS)
        self.names = names
        self.workdir = workdir
        self.runs: list[FuzzRun] = []
        self._futures: dict[str, Future[FuzzRun]] = {}
        self._executor: ThreadPoolExecutor | None = None

    def result(self, name: str) -> FuzzRun:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="fuzz")
            for n in self.names:
                self._futures[n] = self._executor.submit(run_harness, n, self.seconds, self.workdir / n)
        if name not in self._futures:  # not collected as selected (run directly): start it now
            self._futures[name] = self._executor.submit(run_harness, name, self.seconds, self.workdir / name)
        run = self._futures[name].result()
        self.runs.append(run)
        return run

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
