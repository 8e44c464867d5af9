"""Every fuzz harness runs its budget without a crash, an unexpected exception, a logged traceback or
a hang (see ``_common.py`` for the contract, ``_runner.py`` for how they run), and the corpus that
seeds them stays small and complete.

``PHYSARUM_FUZZ_SECONDS`` sets each harness's budget (default 10), ``PHYSARUM_FUZZ_JOBS`` how many run
at once (default 2); ``-m "not fuzz"`` leaves them out. A failure shows the harness's output: the
exception, its traceback and the input (hex and base64); the input is also saved as
``crash-<sha1>`` (``timeout-<sha1>`` for a hang) beside the run's corpus copy. Rerun it alone with
``python tests/fuzz/fuzz_<name>.py crash-<sha1>``, and make it a regression test beside the
decoder's own tests.
"""

from __future__ import annotations

import pytest

from ._runner import CORPUS, HARNESSES, HERE, FuzzPool

#: The seed corpus is checked in: keep it to a handful of small inputs per harness.
MAX_CORPUS_BYTES = 200 * 1024


def test_every_harness_has_a_seed_corpus() -> None:
    assert len(HARNESSES) >= 13, HARNESSES
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == HARNESSES
    for name in HARNESSES:
        seeds = [p for p in (CORPUS / name).iterdir() if p.is_file()]
        assert len(seeds) >= 3, f"corpus/{name} holds {len(seeds)} inputs"
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total <= MAX_CORPUS_BYTES, f"the corpus holds {total} bytes"


def test_harnesses_are_runnable_scripts() -> None:
    for name in HARNESSES:
        text = (HERE / f"fuzz_{name}.py").read_text()
        assert 'if __name__ == "__main__":' in text and "_common.main(" in text, name
        assert "atheris.instrument_imports(" in text, name


@pytest.mark.fuzz
@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzz_harness(harness: str, fuzz_pool: FuzzPool) -> None:
    run = fuzz_pool.result(harness)
    executions = run.stats.get("number_of_executed_units", 0)
    print(f"{harness}: {executions} executions in {run.seconds} s, coverage {run.stats.get('cov')}")
    assert run.returncode == 0, (
        f"fuzz_{harness}.py failed (exit {run.returncode}); inputs it saved are in {run.workdir}; "
        f"rerun one with: python tests/fuzz/fuzz_{harness}.py {run.workdir}/crash-...\n" + run.output[-6000:]
    )
    assert executions > 0, run.output[-3000:]
