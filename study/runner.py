"""What every study command runs: `run_study`, a study from its checks to its tables, in steps.

A study command (`study.table2`, `study.ablate`) turns its flags into a StudySpec and a list of
trials — each a key, a TrialConfig and a few tags — and hands them to `run_study`:

    check -> lock -> open the records -> plan (with the estimate) -> start -> execute -> close -> analyse

Everything is checked before the first trial starts (and before anything is written); a bad value
exits with one line on stderr and code 2 (`main_wrapper`). The steps live where their concern does:
the flags in study.flags, the storage in study.storage, the resume checks in study.resume, the plan
and its estimate in study.plan, the trial's execution and its records in study.execution.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from analysis.schema import one_line, sqlite_path
from study.plan import SMOKE_NOTE, Plan, make_packs, make_plan, process_started, wrap_line
from study.resume import check_records, data_checksums, resume_schedule_params, study_settings
from study.spec import SpecError, StudyError, StudyRun, StudySpec, TrackingLost, Trial, Unschedulable
from study.storage import (
    check_no_checkpoints,
    check_storage,
    read_manifest,
    study_folder,
    trial_folder,
    write_manifest,
)
from trainables import data as data_mod
from trainables.config import ConfigError, TrialConfig


def run_study(spec: StudySpec, kind: str, trials: list[Trial], tags_of_config, analyse, plan_lines=(),
              search=None) -> int:
    """Check, print the plan, run the trials with the spec's executor (Ray Tune or this process),
    recording them in MLflow, then analyse. With `search` (a study.spec.Search), an Optuna search
    runs after the grid trials (`trials` may then be empty). The study's driver lock (study.lock) is
    held from the checks that read its records to the end, and released however the command ends.
    Returns 0 when every trial finished, 1 when any did not."""
    # the first line at once: the checks, the data and the probe take a while before the plan prints
    print(f"checking study {spec.name} ({kind}, preset {spec.preset}): the data, the records, a throughput probe ...",
          flush=True)
    with contextlib.ExitStack() as held:
        run = check(spec, kind, trials, search)
        if not spec.estimate_only:
            take_lock(run, held)
        open_records(run)
        plan = make_plan(run, plan_lines)
        if spec.estimate_only:
            print("estimate only (--estimate-only): nothing was written")
            return 0
        common_tags = provenance(run)
        todo, kept = start(run, plan, common_tags)
        status, failed = execute(run, plan, todo, kept, tags_of_config, common_tags)
        close(run, plan, status)
        return report(run, analyse, status, failed, plan)


# ------------------------------------------------------------------ check
def check(spec: StudySpec, kind: str, trials: list[Trial], search) -> StudyRun:
    """Every check that needs no lock and writes nothing, the cheap ones first: those of the flags
    and the folders before the data is read (a refusal in seconds), then those of the data
    (`preflight`). The trials (and the search) set to the run's device, threads and precision."""
    started = time.time()
    if search is not None and spec.resume:
        # Optuna's sampler state is not recorded, so a search cannot be continued where it stopped
        raise StudyError("--resume is not supported for a study with a search (Optuna's sampler state "
                         "is not recorded); start the search again under a new --name")
    if search is not None and spec.executor == "local":
        raise StudyError("--search is not allowed with --executor local (Optuna's trials and ASHA's stops are "
                         "scheduled by Ray Tune); allowed: --executor ray")
    storage = check_start(spec)
    faults = {}
    if os.environ.get("IQA_LS_FAULT"):  # study.execution.FAULT_ENV, read without importing the trainer (seconds)
        from study import execution
        try:  # the fault-injection test hook (docs/fault-tolerance.md); refused like any bad value
            faults = execution.parse_faults(os.environ.get(execution.FAULT_ENV), {t.key for t in trials})
        except ValueError as e:
            raise StudyError(str(e)) from None
    facts = preflight(spec, trials, search)
    from study import tracking
    tracking.set_http_env()  # before the store is opened (open_records)
    run_fields = {"device": spec.run_device, "threads": spec.threads, "precision": spec.precision,
                  "step_impl": spec.step_impl, "pack_data": spec.pack_data, "pack_eval": spec.pack_eval}
    trials = [Trial(t.key, t.config.replace(**run_fields), t.tags, t.title) for t in trials]
    if search is not None:
        search = dataclasses.replace(search, base=search.base.replace(**run_fields))
    return StudyRun(spec, kind, trials, search, storage, train=facts["train"], n_test=facts["n_test"],
                    faults=faults, settings=study_settings(spec, trials, search),
                    out=Path(spec.out or Path("results") / spec.name), started=started, notes=facts["notes"])


def check_start(spec: StudySpec) -> str:
    """Whether the study may start (or resume) under its name, from what the storage and the store
    hold (read-only, cheap: a command calls it before it builds trials that need the data, and `check`
    again). Returns --storage checked (a local folder made absolute)."""
    storage = check_storage(spec.storage)  # checked by the spec too (StudySpec.from_args); here made absolute
    db = sqlite_path(spec.tracking_uri)
    if spec.resume and db is not None and not db.is_file():  # refused before the store is created
        raise StudyError(f"--resume: no tracking store at {db} (--tracking-uri {spec.tracking_uri}), so no "
                         f"study named {spec.name!r} to resume")
    check_no_checkpoints(spec, storage)  # read-only; again under the lock
    return storage


def preflight(spec: StudySpec, trials: list[Trial], search=None) -> dict:
    """Every check of the grid and the data that can fail (the spec checked the flags and folders),
    before anything is written: the grid's size, the fine-tunes' parents, the data-dependent values
    against the data's size (read from the files' metadata where it can be, before decoding), then
    the data itself. Returns facts for the plan: the training split, the test split's size, and
    notes (a preset's subset above the data)."""
    from study.flags import MAX_TRIALS

    n_search = search.n_trials if search is not None else 0
    configs = [t.config for t in trials] + ([search.base] if search is not None else [])
    if not configs:
        raise StudyError("no trials to run (empty grid)")
    if len(trials) + n_search > MAX_TRIALS:
        raise StudyError(f"{len(trials) + n_search} trials is more than a study may hold; allowed: at most "
                         f"{MAX_TRIALS} (fewer --seeds, settings or --trials; or several studies)")
    keys = [t.key for t in trials]
    if len(set(keys)) != len(keys):
        raise StudyError(f"duplicate trial keys in the grid: {sorted({k for k in keys if keys.count(k) > 1})}")
    check_parents(trials)
    source = configs[0].data
    try:
        sizes = (data_mod.split_rows(source, "train"), data_mod.split_rows(source, "test"))
        if None not in sizes:  # known from the files' metadata: refused before anything is decoded
            notes = check_sizes(spec, size_values(configs), *sizes)
        train = data_mod.load_split(source, "train")
        test = data_mod.load_split(source, "test")
    except data_mod.DataError as e:
        raise StudyError(f"--data: {e}") from None
    n_train, n_test = train.images.shape[0], test.images.shape[0]
    if (n_train, n_test) != sizes:  # pickled batches (or a download): checked on the decoded data
        notes = check_sizes(spec, size_values(configs), n_train, n_test)
    from trainables import robustness
    try:  # an official folder is read and checked here (every file, labels against the test split)
        robustness.check(configs[0])
    except data_mod.DataError as e:
        raise StudyError(f"--cifar10c: {e}") from None
    return {"train": train, "n_test": n_test, "notes": notes}


def check_data_sizes(spec: StudySpec, data: str, fields: dict, val: int) -> None:
    """The flags' --val-size and subsets (`fields`: study.flags.schedule_fields) against the data's
    size, when the files' metadata says it without decoding: a command calls it before it builds its
    trials (whose configs import the trainer's registries, and the --iqa grid's matched control trains
    on them); `preflight` checks every trial's values again."""
    sizes = data_mod.split_rows(data, "train"), data_mod.split_rows(data, "test")
    if None not in sizes:
        check_sizes(spec, {(val, fields.get("subset", 0), fields.get("test_subset", 0),
                            fields.get("cifar10c_subset", 0))}, *sizes)


def size_values(configs: list[TrialConfig]) -> set[tuple[int, int, int, int]]:
    """The values `check_sizes` checks, of every config: (val_size, subset, test_subset, cifar10c_subset)."""
    return {(c.val_size, c.subset, c.test_subset, c.cifar10c_subset) for c in configs}


def check_sizes(spec: StudySpec, values: set[tuple[int, int, int, int]], n_train: int, n_test: int) -> list[str]:
    """The values that depend on the data's size (`size_values`), against it (docs/commands.md):
    --val-size must leave training images, and a subset flag above what the data holds is refused,
    never clipped silently. A preset's subset above the data is used whole and said in the plan (the
    returned notes): the presets are sized for CIFAR-10, not for a smaller data set."""
    notes = []
    for val, subset, test_subset, c10c in sorted(values):
        if val and val >= n_train:
            raise StudyError(f"--val-size {val} is not allowed for the data's {n_train} training images; allowed: "
                             f"0..{n_train - 1} (it must leave images to train on)")
        pool = n_train - val
        held = f" ({n_train} minus the {val}-image validation split)" if val else ""
        for flag, v, n, what in (("subset", subset, pool, f"{pool} training images{held}"),
                                 ("test_subset", test_subset, n_test, f"{n_test} test images"),
                                 ("cifar10c_subset", c10c, n_test, f"{n_test} test images")):
            if v <= n:
                continue
            name = "--" + flag.replace("_", "-")
            if flag in spec.flags or flag == "cifar10c_subset":
                raise StudyError(f"{name} {v} is more than the data's {what}; allowed: 0..{n} (0 = all)")
            note = f"the preset's {flag} of {v} is more than the data's {what}: all {n} are used"
            if note not in notes:
                notes.append(note)
    return notes


def check_parents(trials: list[Trial]) -> None:
    """Every fine-tune's parent (TrialConfig.finetune_from) is a from-scratch Original of the same
    grid that shares its training set, data, schedule and seed (TrialConfig.parent_mismatch): the
    study trains it first and the fine-tune starts from its final weights. Refused in one line."""
    by_key = {t.key: t for t in trials}
    for t in trials:
        if not t.config.finetune:
            continue
        parent = by_key.get(t.config.finetune_from)
        if parent is None:
            raise StudyError(f"trial {t.key}: finetune_from={t.config.finetune_from!r} is not allowed; "
                             f"allowed: a trial of this study's grid ({', '.join(sorted(by_key)[:4])}, ...)")
        diff = t.config.parent_mismatch(parent.config)
        if diff:
            k, a, b = diff[0]
            raise StudyError(f"trial {t.key}: its parent {parent.key} has {k}={a!r}; allowed: {k}={b!r} "
                             "(a fine-tune starts from the Original of the same training set, data, schedule "
                             "and seed)")


# ------------------------------------------------------------------ lock, records
def take_lock(run: StudyRun, held: contextlib.ExitStack) -> None:
    """The study's driver lock (study.lock), or a StudyError naming its holder. The lock first: a
    second driver is refused before it writes anything (not even a new store); it is released on
    return, exception, Ctrl-C and SIGTERM (both a KeyboardInterrupt: `Terminated`)."""
    from study.lock import LockHeld, StudyLock

    lock = StudyLock(study_folder(run.storage, run.spec.name))
    try:
        lock.acquire()
    except LockHeld as e:
        raise StudyError(str(e)) from None
    run.lock = lock
    held.callback(lock.release)
    # under the lock: what the study's records say now cannot change until we are done
    check_no_checkpoints(run.spec, run.storage)


def open_records(run: StudyRun) -> None:
    """The study's records (study.tracking), checked against the command (study.resume). An
    estimate without a tracking store creates none."""
    from study import tracking

    spec = run.spec
    db = sqlite_path(spec.tracking_uri)
    if not (spec.estimate_only and db is not None and not db.is_file()):
        run.rec = tracking.StudyRecorder(spec.tracking_uri, spec.name, run.kind, spec.experiment)
    check_records(run, run.rec.recorded() if run.rec is not None else None)


def provenance(run: StudyRun) -> dict:
    """What every trial's run (and the parent run) is tagged with besides its config: a small dict,
    never the data (Ray pickles the callbacks into its experiment state)."""
    return {"data_source": run.train.source, "data_checksum": run.train.checksum, "git_commit": _git_commit(),
            "versions": versions()}


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    """The library versions a run records. Ray's is read from its package metadata, not by importing
    it: `--executor local` runs where Ray is not installed (then "not installed")."""
    from importlib import metadata

    import kornia
    import mlflow
    import torch
    import torchvision
    try:
        ray_version = metadata.version("ray")
    except metadata.PackageNotFoundError:
        ray_version = "not installed"
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "kornia": kornia.__version__,
            "ray": ray_version, "mlflow": mlflow.__version__}


# ------------------------------------------------------------------ start, execute, close
def start(run: StudyRun, plan: Plan, common_tags: dict) -> tuple[list[Trial], int]:
    """Open the parent run (or reopen it, on a resume) with the plan as its description, write the
    manifest a later --resume is checked against. Returns the trials to run and how many a resume
    keeps (finished before)."""
    from study import execution

    spec, rec = run.spec, run.rec
    parent_tags = {"preset": spec.preset, "seeds": spec.seeds, **common_tags,
                   "device_name": execution.device_name(spec.probe_device) if plan.probed else spec.run_device,
                   "storage": run.storage, "executor": spec.executor, **grid_tags(run.trials),
                   **(run.search.parent_tags if run.search is not None else {})}
    flags = {k: v for k, v in spec.flags.items() if k != "resume"}
    description = (f"{'Resumed' if spec.resume else 'Started'} {time.strftime('%Y-%m-%d %H:%M:%S')} with:\n\n"
                   f"    {spec.command}\n\nPlan:\n\n" + "\n".join(f"    {line}" for line in plan.lines))
    rec.open_parent(spec.resume, parent_tags, {**flags, **resume_schedule_params(run.trials, run.search),
                                               "n_trials": run.n_trials},
                    description=description, reopen=not plan.nothing_left)
    if not spec.resume or read_manifest(run.storage, spec.name) is None:  # what a --resume is checked against
        try:
            write_manifest(run.storage, spec.name, {"name": spec.name, "kind": run.kind, "created": time.time(),
                                                    **run.settings, **data_checksums(run)})
        except OSError:  # a full disk, a read-only mount: no parent run left RUNNING (main_wrapper says why)
            with shielded("recording the failed start in MLflow"):
                rec.close_parent("FAILED")
            raise
    done = rec.finished_keys() if spec.resume else set()
    todo = [t for t in run.trials if t.key not in done]
    if done:
        print(f"  resume: {len(done)} finished trials kept, {len(todo)} to run (from their checkpoints)")
    return todo, len(done)


def grid_tags(trials: list[Trial]) -> dict:
    """Parent-run tags of what the grid holds, for the analyses (which read MLflow only): the Table 2
    strategies (`strategies`, e.g. "1,8,9") and the protocols ("scratch,finetune")."""
    strategies = sorted({t.config.strategy for t in trials if t.config.strategy})
    protocols = [p for p in ("scratch", "finetune") if any(t.config.protocol == p for t in trials)]
    return {**({"strategies": ",".join(map(str, strategies))} if strategies else {}),
            **({"protocols": ",".join(protocols)} if protocols else {})}


def trial_spec(storage: str, study: str, faults: dict, key: str, config: TrialConfig, tags: dict,
               title: str = "", data_checksums: dict | None = None) -> dict:
    """What an executor runs for one trial (study.execution.run_spec): plain data, as Ray pickles it.
    `data_checksums`: what the study recorded its data as (study.resume.data_checksums); the trial
    refuses to train on anything else."""
    out = {"key": key, "config": config.to_dict(), "tags": tags, "run_name": title or key,
           "store": trial_folder(storage, study, key),
           "cache_dir": str(data_mod.default_cache_dir()), "fault": faults.get(key),
           "data_checksums": data_checksums}
    if config.finetune:  # where its parent's final weights are: only runs it (never compared)
        out.update(parent=config.finetune_from, parent_store=trial_folder(storage, study, config.finetune_from))
    return out


def execute(run: StudyRun, plan: Plan, todo: list[Trial], kept: int, tags_of_config,
            common_tags: dict) -> tuple[str, dict[str, str]]:
    """Run the trials left (and the search) with the spec's executor, recording them in MLflow.
    Returns the parent run's status and the trials that did not finish (key -> why)."""
    from study import execution

    spec, search = run.spec, run.search
    spec_of = functools.partial(trial_spec, run.storage, spec.name, run.faults, data_checksums=data_checksums(run))
    specs = [spec_of(t.key, t.config, t.tags, t.title) for t in todo]
    if not specs and search is None:
        return "FINISHED", {}
    runs = make_packs(specs, spec.pack_size) if spec.packing else specs  # what the executor runs: trials or packs
    progress = execution.Progress(
        [s["key"] for s in specs], sum(plan.left.get(s["key"], 0) for s in specs)
        + run.n_search * (search.base.epochs if search is not None else 0),
        spec.progress_every, kept=kept, n_search=run.n_search, verbose=spec.verbose)
    recording = execution.Recording(run.rec, tags_of_config, common_tags)
    drive(run, runs, spec_of, recording, progress)
    return tally(run, specs, recording)


def drive(run: StudyRun, runs: list[dict], spec_of, recording, progress) -> None:
    """The executor's run, and what ends it early: on Ctrl-C the runs are marked KILLED and the
    KeyboardInterrupt goes on; a tracking store that stops answering ends the study (TrackingLost)."""
    status = "FINISHED"
    try:
        executor_module(run.spec.executor).execute(dataclasses.replace(run.spec, storage=run.storage), runs,
                                                   run.search, spec_of, recording, progress)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Unschedulable:
        with shielded("recording the failed start in MLflow"):
            run.rec.close_parent("FAILED")
        raise
    except Exception:
        if recording.lost is None:
            raise
    finally:
        if recording.lost is not None and status != "KILLED":
            status = "LOST"  # the tracking store stopped answering: handled below, in one line
        with shielded("recording the interruption in MLflow"):
            if status == "KILLED":
                _mark_killed(run.rec)
    if status == "LOST":
        _stop_lost(run, recording.lost)


def executor_module(name: str):
    """The module that runs a study's trials: study.tuning (Ray) or study.local (this process). Only
    `--executor ray` imports Ray."""
    if name == "local":
        from study import local
        return local
    from study import tuning
    return tuning


def _mark_killed(rec) -> None:
    from study import tracking

    try:
        rec.interrupt_running_children()
        rec.close_parent("KILLED")
    except Exception as e:  # e.g. Ctrl-C because the server hangs: say it, in one line
        print(f"  could not mark the runs KILLED ({one_line(e, typed=True)}); a --resume "
              "continues them all the same", file=sys.stderr)


def _stop_lost(run: StudyRun, lost: str) -> None:
    with shielded("stopping"):
        try:  # one quick try: a server that is back gets its runs KILLED, a dead one stays as is
            run.rec.interrupt_running_children()
            run.rec.close_parent("KILLED")
        except Exception:
            pass
    raise TrackingLost(f"writing to the tracking store {run.spec.tracking_uri} failed ({lost}); the "
                       "study stopped and its checkpoints are kept: run the same command with --resume "
                       "once the store answers again")


def tally(run: StudyRun, specs: list[dict], recording) -> tuple[str, dict[str, str]]:
    """Say which trials failed, stopped early or are unfinished. Ray answers Ctrl-C by stopping the
    trials and returning normally: a study is finished only when every trial of the grid reached an
    end (finished or failed)."""
    failed = dict(recording.failed)
    if recording.failed:
        print(f"  {len(recording.failed)} trial(s) failed: "
              + "; ".join(f"{k}: {v}" for k, v in sorted(recording.failed.items())))
    if recording.stopped_early:
        print(f"  {len(recording.stopped_early)} trial(s) stopped early by ASHA: "
              + ", ".join(f"{k} (epoch {e})" for k, e in sorted(recording.stopped_early.items())))
    status = "FINISHED"
    with shielded("recording the interruption in MLflow"):
        ended = run.rec.finished_keys() | set(recording.failed)
        unfinished = sorted(s["key"] for s in specs if s["key"] not in ended)
        if unfinished:
            status = "KILLED"
            run.rec.interrupt_running_children()  # their MLflow runs say so too (a --resume opens them again)
            print(f"  interrupted: {len(unfinished)} trial(s) unfinished ({', '.join(unfinished)}); "
                  f"run the same command with --resume to continue them from their checkpoints")
            failed.update({k: "interrupted" for k in unfinished})
    return status, failed


def close(run: StudyRun, plan: Plan, status: str) -> None:
    """Close the parent run with its status and summary (a resume with nothing left leaves it as it was)."""
    if not plan.nothing_left:
        run.rec.close_parent(status)
        run.rec.log_summary(study_summary(run.rec, run.n_trials, time.time() - run.started, plan.seconds))


def study_summary(rec, n_trials: int, session_s: float, estimated_s: float | None = None) -> dict:
    """Summary metrics of the parent run: trial counts by status, this command's wall time, the plan's
    estimate of it (when the probe ran; `took_wall_s` follows once the tables are written: report),
    and the mean and best of the trials' mean accuracy over the 10 test sets."""
    from analysis.schema import METRIC_ESTIMATED_WALL

    runs = list(rec.children().values())
    finished = [r for r in runs if r.info.status == "FINISHED"]
    accs = [r.data.metrics["acc_mean_all"] for r in finished if "acc_mean_all" in r.data.metrics]
    out = {"trials": n_trials, "trials_finished": len(finished),
           "trials_failed": sum(r.info.status == "FAILED" for r in runs),
           "trials_unfinished": n_trials - len(finished) - sum(r.info.status == "FAILED" for r in runs),
           "session_wall_s": session_s}
    if estimated_s is not None:
        out[METRIC_ESTIMATED_WALL] = estimated_s
    if accs:
        out.update(acc_mean_all_mean=sum(accs) / len(accs), acc_mean_all_best=max(accs))
    return out


# ------------------------------------------------------------------ analyse
def report(run: StudyRun, analyse, status: str, failed: dict[str, str], plan: Plan | None = None) -> int:
    """The study's tables (`analyse(parent run id, out folder)`: the compact table, or with --verbose
    the full ones), where its runs are, the estimate against the time taken (printed, and recorded on
    the parent run), and the exit code: 0 when every trial finished and the tables were built, else 1."""
    from study import tracking

    spec = run.spec
    files = analyse(run.rec.parent_id, run.out)
    if spec.preset == "smoke":
        say(SMOKE_NOTE)
    if run.first_config.cifar10c:  # issue 14: the CIFAR-10-C tables beside the study's own (analysis.cifar10c)
        cifar10c_tables(run)
    say(f"open these runs: {tracking.ui_command(spec.tracking_uri, run.rec.experiment_id, run.rec.parent_id)}")
    if failed:
        shown = "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        print(f"error: {len(failed)} of {run.n_trials} trial(s) did not finish ({shown[:1500]}); the "
              "tables leave them out; fix the cause and run the same command with --resume", file=sys.stderr)
    took(run, plan)
    if failed:
        return 1
    return 0 if files is not None and status == "FINISHED" else 1


def took(run: StudyRun, plan: Plan | None) -> None:
    """`estimated X, took Y` (from the process start, as `time` measures), the study's last line, and
    `took_wall_s` on the parent run beside `estimated_wall_s` (close): the estimate's error is on record.
    A resume with nothing left to run leaves its parent run as it was."""
    from analysis.schema import METRIC_TOOK_WALL
    from study.execution import fmt_duration

    seconds = time.time() - process_started()
    est = plan.seconds if plan is not None else None
    if est:
        say(f"estimated {fmt_duration(est)}, took {fmt_duration(seconds)} ({(seconds - est) / est:+.0%} against the "
            "estimate)")
    else:
        say(f"took {fmt_duration(seconds)} (no estimate: the probe did not run)")
    if plan is not None and not plan.nothing_left:
        with shielded("recording the wall time in MLflow"):
            run.rec.log_summary({METRIC_TOOK_WALL: seconds})


def say(text: str) -> None:
    """A line of the study's output, cut at spaces to study.plan.CONSOLE_WIDTH."""
    for line in wrap_line(text):
        print(line, flush=True)


def cifar10c_tables(run: StudyRun) -> None:
    from analysis.cifar10c import AnalysisError, build_cifar10c
    from analysis.cifar10c import format_console as c10c_console

    spec = run.spec
    try:
        print(c10c_console(build_cifar10c(parent_run_id=run.rec.parent_id, tracking_uri=spec.tracking_uri,
                                          experiment=spec.experiment, out_dir=run.out)))
    except AnalysisError as e:
        print(f"  CIFAR-10-C tables not built: {e}")


# ------------------------------------------------------------------ shutdown and interruption
class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread (`main_wrapper`'s handler): a KeyboardInterrupt, so every
    path that stops a study on Ctrl-C (the runs marked KILLED, no retry, the lock released) stops it
    on SIGTERM too; `main_wrapper` exits 143 (128 + 15) for it, 130 for Ctrl-C."""


_SIGTERM_SEEN = threading.Event()  # set by the handler: library code (Ray Tune) may catch our Terminated
# and raise a plain KeyboardInterrupt in its place, so the exit code is decided by what arrived


def _terminate(sig, frame):
    _SIGTERM_SEEN.set()
    raise Terminated


def _was_terminated(e: KeyboardInterrupt) -> bool:
    return isinstance(e, Terminated) or _SIGTERM_SEEN.is_set()


@contextlib.contextmanager
def shielded(what: str):
    """Hold Ctrl-C and SIGTERM while `what` (the MLflow writes that close a study) runs, then raise
    them: a second signal must not leave runs RUNNING. One line says why the command did not stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = []

    def hold(sig, frame):
        if not hits:
            print(f"  {'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'}: {what} first (a few seconds)",
                  file=sys.stderr, flush=True)
        hits.append(sig)

    old = signal.signal(signal.SIGINT, hold)
    old_term = signal.signal(signal.SIGTERM, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
    if hits:
        if signal.SIGTERM in hits:
            _SIGTERM_SEEN.set()
            raise Terminated
        raise KeyboardInterrupt


def main_wrapper(fn) -> int:
    """Run a study main; a refusal is one line on stderr and exit code 2."""
    import logging

    from study.spec import TrackingError  # not study.tracking: a refusal never waits for MLflow's import
    _SIGTERM_SEEN.clear()  # a command run in-process again (tests) starts without an earlier SIGTERM
    # store-creation INFO lines would bury the one-line messages; MLflow sets its loggers' level from
    # MLFLOW_LOGGING_LEVEL when it is imported (after this), so both: a user's own value is kept
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # SIGTERM ends the command as Ctrl-C does (Terminated): runs KILLED, the study lock released;
        # the Ray executor puts this handler back after ray.init replaced it (study.tuning)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return fn()
    except Unschedulable as e:  # found once Ray joined the cluster: the parent run is FAILED, not refused
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (StudyError, SpecError, ConfigError, data_mod.DataError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrackingLost as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        from trainables.files import CAUSES, WriteError, describe_os_error
        if not isinstance(e, WriteError) and (e.errno not in CAUSES or not e.filename):
            raise
        # a full disk, a read-only mount, no permission (a manifest, a lock, a table): the file and the
        # cause in one line, not a traceback; the checkpoints written so far are kept
        print(f"error: {e if isinstance(e, WriteError) else f'{e.filename}: {describe_os_error(e)}'}; "
              "fix it and run the same command with --resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        term = _was_terminated(e)
        print(f"{'terminated (SIGTERM)' if term else 'interrupted'}: the unfinished "
              "trials' runs are KILLED and their checkpoints kept; run the same command with --resume to "
              "continue", file=sys.stderr)
        return 143 if term else 130
