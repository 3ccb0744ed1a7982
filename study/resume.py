"""--resume continues a study only as it was recorded, and the plan counts what it has left.

What defines a study is recorded in its manifest (<storage>/<name>/study.json, study.storage): the
flags that are not RUN_FLAGS, each trial's defining config (TrialConfig.defining) and the content
checksums of its data (`data_checksums`). A --resume is compared with it (with the parent run's
params and tags for a study recorded before manifests) and a difference is refused in one line naming
the flag, the trial and field, or the data split, with both values: a data file replaced at the same
path is refused like a changed --data.
"""
from __future__ import annotations

import json
from pathlib import Path

from analysis.schema import RESUME_SCHEDULE_PARAMS, TAG_DATA_CHECKSUM, TAG_STORAGE, value_text
from study.spec import StudyError, StudyRun, StudySpec, Trial
from study.storage import is_local, read_manifest, trial_folder
from trainables.config import TrialConfig

# Flags that only run a study (where, how fast, how loud, where its records go): a --resume may give
# other values. Every other flag, the resolved schedule and the grid define the study (as
# trainables.config.RUN_FIELDS does for one trial) and must be what the study recorded.
RUN_FLAGS = ("resume", "cpus_per_trial", "gpus_per_trial", "address", "out", "device", "max_failures",
             "progress_every", "pack", "pack_size", "tracking_uri", "experiment", "storage", "name", "executor",
             "estimate_only", "step_impl", "pack_data", "pack_eval", "verbose", "node_wait")


def check_records(run: StudyRun, recorded: tuple | None) -> None:
    """The study's records agree with the command: a new study has none, a --resume has them and
    they match (the manifest, else the parent run's params; the CIFAR-10-C flags). `recorded` is
    StudyRecorder.recorded(): (params, tags) of the study's parent run, or None."""
    from study import tracking

    spec = run.spec
    if recorded and not spec.resume:
        raise StudyError(f"study {spec.name!r} already exists in {spec.tracking_uri}; "
                         "pass --resume to continue it or choose another --name")
    if not spec.resume:
        return
    if recorded is None:
        raise StudyError(f"--resume: no study named {spec.name!r} in {spec.tracking_uri}")
    manifest = read_manifest(run.storage, spec.name)
    rec_storage = recorded[1].get(TAG_STORAGE)
    if manifest is None and rec_storage and rec_storage != run.storage:
        raise StudyError(f"--resume: --storage {run.storage} holds no study {spec.name!r}, which was recorded "
                         f"with --storage {rec_storage}; resume with --storage {rec_storage}")
    check_resume_matches(spec, run.settings, manifest or None, recorded[0])
    check_resume_data(run, manifest or {}, recorded[1])
    if run.trials:
        check_resume_evaluation(run.rec.recorded_trial_params(), run.trials[0].config)


# what the manifest calls each split's checksum (the train split's is also every run's
# iqa_ls.data_checksum tag, analysis.schema.TAG_DATA_CHECKSUM)
DATA_CHECKSUM_KEYS = {"train": "data_checksum", "test": "test_data_checksum"}


def data_checksums(run: StudyRun) -> dict:
    """The content checksums ("sha256:<hex>", trainables.data.Split.checksum) of the study's train and
    test split, as the manifest records them. The splits were loaded by the preflight: this reads
    them from the process's memo (only the files' size and mtime are looked at again)."""
    from trainables import data as data_mod

    source = run.first_config.data
    return {name: (run.train.checksum if split == "train" else data_mod.load_split(source, split).checksum)
            for split, name in DATA_CHECKSUM_KEYS.items()}


def check_resume_data(run: StudyRun, manifest: dict, parent_tags: dict) -> None:
    """--resume trains on the data the study was started on: the data's checksums now against the
    manifest's (a study recorded before they were: the train split's against the parent run's
    data_checksum tag). A file replaced at the same path is refused in one line naming both checksums."""
    now = data_checksums(run)
    recorded = {name: manifest[name] for name in DATA_CHECKSUM_KEYS.values() if manifest.get(name)}
    if not recorded and parent_tags.get(TAG_DATA_CHECKSUM):
        recorded = {DATA_CHECKSUM_KEYS["train"]: parent_tags[TAG_DATA_CHECKSUM]}
    for split, name in DATA_CHECKSUM_KEYS.items():
        if name in recorded and recorded[name] != now[name]:
            raise StudyError(f"--resume: the {split} split of --data {run.first_config.data} has checksum "
                             f"{now[name]} but study {run.spec.name!r} was recorded with {recorded[name]} (a "
                             "data file was replaced or changed); resume with the recorded data, or start a "
                             "new study under another --name")


def study_settings(spec: StudySpec, trials: list[Trial], search) -> dict:
    """What defines the study, as recorded in its manifest: the flags that are not RUN_FLAGS and each
    trial's defining config (TrialConfig.defining)."""
    flags = {k: v for k, v in sorted(spec.flags.items()) if k not in RUN_FLAGS and v is not None}
    return {"flags": flags, "trials": {t.key: t.config.defining() for t in trials},
            "search": search.n_trials if search is not None else 0}


def _shown(v) -> str:
    return "(not given)" if v is None else (json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else str(v))


def check_resume_matches(spec: StudySpec, settings: dict, recorded_manifest: dict | None,
                         recorded_params: dict) -> None:
    """--resume continues the recorded study only: the grid and every trial's defining config must be
    the recorded ones. A difference is refused in one line naming the flag (or, when no flag explains
    it, the trial and field) with the recorded and the given value."""
    if recorded_manifest is not None:
        _check_manifest(spec, settings, recorded_manifest)
    else:  # a study recorded before manifests: its parent run's params hold the flags and the schedule
        _check_params(spec, settings, recorded_params)


def _check_manifest(spec: StudySpec, settings: dict, recorded_manifest: dict) -> None:
    given = settings["flags"]
    old_trials, new_trials = recorded_manifest["trials"], settings["trials"]
    if old_trials == new_trials:
        return  # the same trials: flags that differ change nothing a trial does
    old_flags = recorded_manifest.get("flags", {})

    def effective(flags: dict, trials: dict, k: str) -> str:
        # a schedule flag not given is the preset's value: say which, from the trials themselves
        if flags.get(k) is None and trials and k in next(iter(trials.values())):
            return f"(not given: {_shown(next(iter(trials.values()))[k])})"
        return _shown(flags.get(k))

    for k in sorted(set(old_flags) | set(given)):
        if _shown(old_flags.get(k)) != _shown(given.get(k)):
            raise StudyError(_mismatch(spec, f"--{k.replace('_', '-')}", effective(old_flags, old_trials, k),
                                       effective(given, new_trials, k)))
    if set(old_trials) != set(new_trials):
        raise StudyError(_mismatch(spec, "the grid", f"{len(old_trials)} trials", f"{len(new_trials)} trials "
                                   f"(new: {', '.join(sorted(set(new_trials) - set(old_trials))[:3]) or '-'}; "
                                   f"gone: {', '.join(sorted(set(old_trials) - set(new_trials))[:3]) or '-'})"))
    defaults = TrialConfig().defining()  # a field added since a trial was recorded: its default
    for key in sorted(new_trials):
        old = {**defaults, **old_trials[key]}
        diff = [(k, old.get(k), v) for k, v in sorted(new_trials[key].items()) if old.get(k) != v]
        if diff:
            k, a, b = diff[0]
            raise StudyError(_mismatch(spec, f"trial {key}'s {k}", _shown(a), _shown(b)))


def _check_params(spec: StudySpec, settings: dict, recorded_params: dict) -> None:

    first = next(iter(settings["trials"].values()), {})
    current = {**{k: value_text(first[k]) for k in RESUME_SCHEDULE_PARAMS if k in first},
               **{k: value_text(v) for k, v in settings["flags"].items()}}
    for k in sorted(recorded_params):
        if k in RUN_FLAGS or k == "n_trials":
            continue
        if k in current and recorded_params[k] != current[k]:
            raise StudyError(_mismatch(spec, f"--{k.replace('_', '-')}", recorded_params[k], current[k]))
    n = len(settings["trials"]) + settings["search"]
    if "n_trials" in recorded_params and recorded_params["n_trials"] != str(n):
        raise StudyError(_mismatch(spec, "the grid", f"{recorded_params['n_trials']} trials", f"{n} trials"))


def _mismatch(spec: StudySpec, what: str, recorded: str, given: str) -> str:
    return (f"--resume: {what} is {given} but study {spec.name!r} was recorded with {recorded}; resume with "
            "the recorded value, or start a new study under another --name")


def resume_schedule_params(trials: list[Trial], search) -> dict:
    """The schedule as the parent run's params record it (compared on a resume of an older study)."""
    cfg0 = trials[0].config if trials else search.base
    return {k: getattr(cfg0, k) for k in RESUME_SCHEDULE_PARAMS}

def check_resume_evaluation(recorded: dict | None, cfg: TrialConfig) -> None:
    """Refuse a --resume whose CIFAR-10-C flags differ from the ones the study's trials were recorded
    with: its finished trials would be evaluated on other data than the rest. (Evaluate a finished study
    on other data with `python -m study.cifar10c`.) The manifest's flag check (check_resume_matches)
    catches this too; this check also covers a study recorded before manifests (its params)."""
    if not recorded:
        return
    from trainables.config import EVAL_FIELDS

    def value(f: str):  # params are text (study.tracking: lists as JSON); absent = recorded before the field
        if f not in recorded:
            return getattr(TrialConfig(), f)
        if f == "cifar10c_corruptions":
            return tuple(json.loads(recorded[f]))
        return int(recorded[f]) if isinstance(getattr(cfg, f), int) else recorded[f]
    for f in EVAL_FIELDS:
        if value(f) != getattr(cfg, f):
            raise StudyError(f"--resume with {f}={getattr(cfg, f)!r} is not allowed: the study's trials were "
                             f"recorded with {f}={value(f)!r}; allowed: the same --cifar10c flags as the first run "
                             "(evaluate a finished study on other data with python -m study.cifar10c)")


def epochs_left(spec, trials: list[Trial], rec, storage: str) -> tuple[dict[str, int], str]:
    """trial key -> epochs still to train, for the plan's estimate: all of them on a new study; on
    --resume, none for a finished trial and the epochs after its checkpoint for the others (read
    where the storage is a filesystem path; on object storage they count from epoch 0)."""
    if not spec.resume:
        return {t.key: t.config.total_epochs - t.config.first_epoch for t in trials}, ""
    from trainables.checkpoints import load_checkpoint

    finished = rec.recorded_finished_keys()
    left = {}
    for t in trials:
        if t.key in finished:
            continue
        start = 0
        if is_local(storage):
            state = load_checkpoint(Path(trial_folder(storage, spec.name, t.key)))
            start = int(state["epoch"]) if state else 0
        left[t.key] = max(0, t.config.total_epochs - max(start, t.config.first_epoch))
    total = sum(t.config.total_epochs - t.config.first_epoch for t in trials)
    return left, (f"resume: {sum(left.values())} of {total} epochs left ({len(finished)} trials finished"
                  + (", checkpoints on object storage counted from epoch 0)" if not is_local(storage) else ")"))
