"""`--executor local`: a study's trials in this process, one after another (a pack as one trial), on
the local device, without Ray (nothing here or in what it imports loads Ray).

The trial's execution, its checkpoints and its MLflow records are the ones `--executor ray` gives
(study/execution.py: `run_spec`, `Recording`, `Progress`): the same child runs, tags, per-epoch
metrics, artifacts, folders and resume. What Ray adds and this does not: running trials side by side
(here one at a time, each with all the threads `--cpus-per-trial` gives it), several nodes, and
searches (`--search` needs `--executor ray`). A crash (an exception that is not a property of the
trial, which `run_spec` reports as a failure itself) is retried up to `--max-failures` times, each
retry continuing from the trial's last checkpoint, as Ray retries a trial on a lost worker.
"""
from __future__ import annotations

import contextlib
import threading
import traceback

from study.execution import (
    Progress,
    RecordFailed,
    Recording,
    local_node,
    members_of,
    phases,
    run_spec,
    without_orphans,
)


def execute(study, runs: list[dict], search, spec_of, recording: Recording, progress: Progress) -> None:
    """Run `runs` (trial specs and packs) in order, the from-scratch ones before the fine-tunes
    (execution.phases); `search` must be None (refused before: the study spec checks it)."""
    if search is not None:
        raise ValueError("a search needs --executor ray")
    node = local_node()
    for n, phase in enumerate(phases(runs)):  # the from-scratch trials, then the fine-tunes
        if recording.lost is not None:
            return
        phase = without_orphans(phase, recording, progress) if n else phase
        run_phase(study, phase, node, recording, progress)


def run_phase(study, runs: list[dict], node: str, recording: Recording, progress: Progress) -> None:
    for spec in runs:
        if recording.lost is not None:
            return
        running = {m["key"] for m in members_of(spec)}
        recording.start(spec)
        last: dict = {}

        def emit(result: dict) -> None:
            nonlocal last
            recording.result(spec, result)
            progress.result(spec, result)
            progress.tick(running)
            last = result

        for attempt in range(study.max_failures + 1):
            try:
                with ticking(progress, running):
                    run_spec(spec, emit, node)
            except (KeyboardInterrupt, RecordFailed):
                raise
            except Exception:  # noqa: BLE001 - a crash: retried from the checkpoint, then recorded
                if attempt < study.max_failures:
                    progress.say(f"  {spec['key']} crashed (attempt {attempt + 1} of "
                                 f"{study.max_failures + 1}); retrying from its last checkpoint", flush=True)
                    continue
                recording.error(spec, traceback.format_exc())
                progress.error(spec, set())
                break
            recording.complete(spec, last)
            progress.complete(spec, set())
            break


@contextlib.contextmanager
def ticking(progress: Progress, running: set[str], every_s: float = 1.0):
    """Progress.tick every `every_s` seconds while a trial runs in this thread, so a progress line comes
    every --progress-every seconds even when an epoch takes longer (Ray's driver ticks by itself)."""
    stop = threading.Event()

    def tick():
        while not stop.wait(every_s):
            try:
                progress.tick(running)
            except RuntimeError:  # the trial's thread changed Progress's dicts mid-line: the next tick says it
                pass

    thread = threading.Thread(target=tick, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
