"""The training record's clock leaves out the time a run was stopped with SIGSTOP (kill -STOP), which
the campaign uses to give benchmarks an idle machine."""

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from moldiff.train.active_clock import ActiveClock
from moldiff.train.module import TrainingRecord


class FakeTime:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_gaps_longer_than_the_threshold_are_booked_as_paused():
    now = FakeTime()
    clock = ActiveClock(tick=1.0, threshold=60.0, now=now)
    for _ in range(30):  # ticking: all running
        now.t += 1.0
        clock.observe()
    assert clock.paused == 0.0 and clock.elapsed() == 30.0
    now.t += 40.0  # a late tick on a busy machine: still running
    assert clock.elapsed() == 70.0
    now.t += 600.0  # stopped for ten minutes: one tick of it ran
    assert clock.paused == 0.0
    assert clock.elapsed() == 71.0 and clock.paused == 599.0
    with pytest.raises(ValueError, match="tick < threshold"):
        ActiveClock(tick=5.0, threshold=2.0)


def test_training_record_reports_active_seconds_and_the_pause():
    now = FakeTime()
    clocks = []

    def make():
        clocks.append(ActiveClock(tick=1.0, threshold=60.0, now=now))
        return clocks[-1]

    record = TrainingRecord(clock=make)
    trainer = SimpleNamespace(world_size=1, precision="bf16-mixed", global_step=100, current_epoch=2)
    record.on_train_start(trainer, SimpleNamespace(device=torch.device("cpu")))
    now.t += 50.0
    entry = record._current(trainer)[-1]
    assert entry["seconds"] == 50.0 and "paused_s" not in entry
    now.t += 3600.0
    trainer.global_step = 400
    entry = record._current(trainer)[-1]
    assert entry["seconds"] == 51.0 and entry["paused_s"] == 3599.0 and entry["last_step"] == 400
    record.teardown(trainer, None)


CHILD = """
import sys, time
from moldiff.train.active_clock import ActiveClock
clock = ActiveClock(tick=0.05, threshold=0.5).start()
print("ready", flush=True)
sys.stdin.readline()  # the parent stops and continues us, then writes a line
time.sleep(0.3)
print(clock.paused, clock.elapsed(), flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
def test_a_real_sigstop_is_left_out():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("go\n")
        child.stdin.flush()
        paused, elapsed = map(float, child.stdout.readline().split())
        wall = time.monotonic() - t0
    finally:
        child.kill()
        child.wait()
    assert 1.5 < paused < wall
    assert elapsed < wall - 1.5
