"""Shared fixtures of the tuneplan tests: one tiny model per session, a runs root, one trained
LoRA run (configurations on the tiny model come from tests/tiny_runs.py)."""

from __future__ import annotations

import os

import pytest

from tiny_runs import tiny_config

# Two shared cores: keep torch from oversubscribing them in this process and in children.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from tuneplan.training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def trained_lora_run(tiny_model, tmp_path_factory):
    """One real LoRA run (24 steps, in-process worker), shared by the tests that read it:
    (run_dir, WorkerResult)."""
    from tuneplan.services.launcher import prepare_run
    from tuneplan.training.runner import run_worker

    root = tmp_path_factory.mktemp("shared-runs")
    run_dir = prepare_run(tiny_config(tiny_model), root)
    return run_dir, run_worker(run_dir, install_signals=False)


@pytest.fixture
def no_hang():
    """A call that blocks (a FIFO opened for reading waits for a writer forever) fails the test
    after 30 s instead of stalling the suite: SIGALRM interrupts the blocked system call."""
    import signal

    class Hung(BaseException):  # not an Exception: no `except Exception` on the way may swallow it
        pass

    def hung(*_):
        signal.alarm(5)  # and the next blocked call too
        raise Hung("hung on a bad file")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
