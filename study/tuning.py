"""The Ray side of a study (`--executor ray`): the one module in study/ that imports Ray Tune.

Everything a trial does, and what its results become in MLflow, lives in study/execution.py (shared
with `--executor local`, study/local.py); this module only adapts it to Ray Tune:
- `trainable`: the function Ray runs per trial (or pack): `execution.run_spec` with `tune.report`;
- `MlflowCallback`, `ProgressPrinter`: Tune callbacks in the driver that hand trial starts, results,
  completions and errors to `execution.Recording` and `execution.Progress`; `StopWhenLost` ends
  the experiment once the tracking store stopped taking writes;
- `execute`: the whole run of a study's trials (and its search) on Ray, local or a cluster;
- `run_tuner`: the Tuner call; `run_search`: an Optuna search (OptunaSearch + ASHA) through it.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.stopper import Stopper

from study.execution import Progress, Recording, members_of, phases, run_spec, without_orphans
from study.spec import Unschedulable
from study.storage import absolute

STRICT_METRICS_ENV = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
# Tune's own Ctrl-C handler stops the experiment and returns from fit() as if it had ended, so the
# command could not tell a Ctrl-C from an end; without it the KeyboardInterrupt reaches study.runner,
# which marks the runs KILLED and exits 130 as under --executor local (our checkpoints, not Tune's
# experiment state, are what a --resume continues from)
SIGINT_HANDLER_ENV = "TUNE_DISABLE_SIGINT_HANDLER"
# Tune's output engine: "0" is the one whose verbose=0 is silent. The default engine
# (ray/tune/experimental/output.py, Ray 2.60) prints its "Configuration for experiment" box, the
# experiment path and a TensorBoard hint at every Tuner.fit, whatever verbose says; the study prints
# its own progress (execution.Progress) and says where its files are.
OUTPUT_ENGINE_ENV = "RAY_AIR_NEW_OUTPUT"


# ------------------------------------------------------------------ the trainable
def trainable(param: dict) -> None:
    """Ray function trainable; param["trial"] = a trial spec or a pack (study.execution.run_spec)."""
    return run_spec(param["trial"], tune.report, _node())


def _node() -> str:
    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()}"


# ------------------------------------------------------------------ driver-side callbacks
class MlflowCallback(tune.Callback):
    """Hands Tune's trial events to `execution.Recording` (the MLflow records). Small on purpose: Ray
    pickles the callbacks into its experiment state (tuner.pkl)."""

    def __init__(self, recording: Recording):
        self.recording = recording

    def on_trial_start(self, iteration, trials, trial, **info):
        self.recording.start(trial.config["trial"])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.recording.result(trial.config["trial"], result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.recording.complete(trial.config["trial"], trial.last_result or {})

    def on_trial_error(self, iteration, trials, trial, **info):
        self.recording.error(trial.config["trial"], _error_text(trial))


def _running(trials) -> set[str]:
    return {m["key"] for t in trials if t.status == "RUNNING" for m in members_of(t.config["trial"])}


class ProgressPrinter(tune.Callback):
    """Hands Tune's trial events to `execution.Progress` (the progress lines)."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.progress.result(trial.config["trial"], result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.progress.complete(trial.config["trial"], _running(trials))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.progress.error(trial.config["trial"], _running(trials))

    def on_step_end(self, iteration, trials, **info):
        self.progress.tick(_running(trials))


class StopWhenLost(Stopper):
    """Ends the whole experiment once `recording.lost` is set: Tune turns some callback exceptions into
    trial failures instead of stopping, so the failed write also stops the run this way."""

    def __init__(self, recording: Recording):
        self.recording = recording

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.recording.lost is not None


def _error_text(trial) -> str | None:
    """The trial's error trace. Ray writes it first to the driver's staging folder (trial.error_file)
    and syncs it to storage later, so `trial.get_error()` (which reads storage) can still be empty
    when on_trial_error runs: read the local file first."""
    local = trial.error_file
    if local and Path(local).exists():
        text = Path(local).read_text(errors="replace")
        if text.strip():
            return text
    return trial.get_error()


# ------------------------------------------------------------------ the run of a study on Ray
def execute(study, runs: list[dict], search, spec_of, recording: Recording, progress: Progress) -> None:
    """Run `runs` (trial specs and packs) and then `search` (or None) on Ray: local, or the cluster at
    `study.address`. Ray is started here and shut down however this ends."""
    if study.visible_gpu is not None:  # --device cuda:N: the local Ray sees only GPU N
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[study.visible_gpu] if visible else str(study.visible_gpu)
    main = threading.current_thread() is threading.main_thread()
    on_term = signal.getsignal(signal.SIGTERM) if main else None
    progress.say(f"starting Ray ({'at ' + study.address if study.address else 'on this machine'}) and its "
                 "workers ...", flush=True)
    ray.init(address=study.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             **({} if study.address else {"object_store_memory": 256 * 2**20}))
    if callable(on_term):
        # ray.init replaced the command's SIGTERM handler (with sys.exit, and its core worker with a
        # C++ handler that prints a stack dump and aborts, exit 134): put the command's back, so
        # SIGTERM stops the study as study.runner says (runs KILLED, lock released, exit 143)
        signal.signal(signal.SIGTERM, on_term)
    callbacks = [MlflowCallback(recording), ProgressPrinter(progress)]
    stop = StopWhenLost(recording)
    resources = {"cpu": study.cpus_per_trial, "gpu": study.gpus_per_trial}
    if study.address:  # this machine's resources were checked before any work (study.spec); a cluster's now
        wait_for_a_node(resources, study.address, progress.say, study.node_wait_s)
    old_sigint = os.environ.get(SIGINT_HANDLER_ENV)
    os.environ[SIGINT_HANDLER_ENV] = "1"
    try:
        for n, phase in enumerate(phases(runs)):  # the from-scratch trials, then the fine-tunes
            phase = without_orphans(phase, recording, progress) if n else phase
            if phase and recording.lost is None:
                run_tuner(phase, name=study.name if n == 0 else f"{study.name}/finetune",
                          storage=study.storage, resources=resources, callbacks=callbacks,
                          max_failures=study.max_failures, stop=stop)
        if search is not None and recording.lost is None:
            run_search(search, spec_of, name=study.name, storage=study.storage, resources=resources,
                       callbacks=callbacks, max_failures=study.max_failures, stop=stop)
    finally:
        _restore_env(SIGINT_HANDLER_ENV, old_sigint)
        ray.shutdown()


NODE_POLL_S = 5.0  # how often the cluster's nodes are read while no node can hold a trial


def node_resources() -> list[dict]:
    """The CPUs and GPUs of each live node of the cluster Ray joined."""
    return [{"CPU": n["Resources"].get("CPU", 0.0), "GPU": n["Resources"].get("GPU", 0.0)}
            for n in ray.nodes() if n.get("Alive")]


def wait_for_a_node(need: dict, address: str, say, wait_s: float, nodes=node_resources,
                    poll_s: float = NODE_POLL_S) -> None:
    """Return once a live node can hold one trial (`need`: cpu, gpu per trial). Ray Tune would wait
    for such a node forever; an autoscaling cluster (ray up cluster.yaml) may still add one, so it is
    waited for up to `wait_s` seconds (--node-wait), then the study stops (Unschedulable)."""
    deadline, said = time.monotonic() + wait_s, False
    while True:
        seen = nodes()
        if any(n["CPU"] >= need["cpu"] and n["GPU"] >= need["gpu"] for n in seen):
            return
        shown = ", ".join(f"{n['CPU']:g} CPU + {n['GPU']:g} GPU" for n in seen) or "none alive"
        if time.monotonic() >= deadline:
            raise Unschedulable(
                f"no node of the cluster at {address} can hold a trial ({need['cpu']:g} CPU + {need['gpu']:g} "
                f"GPU per trial; its nodes: {shown}), and none joined within --node-wait {wait_s:g} s; allowed: "
                "--cpus-per-trial/--gpus-per-trial within one node's, or a cluster with such a node")
        if not said:
            say(f"  no node of the cluster holds a trial yet ({need['cpu']:g} CPU + {need['gpu']:g} GPU per trial; "
                f"nodes: {shown}); waiting up to {wait_s:g} s for one to join (--node-wait)", flush=True)
            said = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _restore_env(name: str, old: str | None) -> None:
    if old is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = old


# ------------------------------------------------------------------ the Tuner call
def run_tuner(specs: list[dict], *, name: str, storage: str, resources: dict, callbacks: list,
              max_failures: int = 3, search_alg=None, scheduler=None, metric=None, mode=None,
              param_space=None, num_samples: int = 1, stop=None):
    """Run the trials; returns Ray's ResultGrid. `specs` are grid-searched unless `param_space`
    (with a search algorithm) is given."""
    storage_path = absolute(storage)
    space = param_space if param_space is not None else {"trial": tune.grid_search(specs)}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=space,
        # reuse_actors: a worker process keeps its decoded data and distortion bank between
        # trials (trainables memoises them per process), so only the first trial per worker pays
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, metric=metric,
                                    mode=mode, num_samples=num_samples, reuse_actors=True),
        run_config=tune.RunConfig(
            # a fresh Ray experiment folder per invocation: resume state lives in our trial
            # folders and MLflow, so a killed driver never needs Ray's experiment snapshot
            name=f"{name}/ray-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage_path,
            callbacks=callbacks,
            stop=stop,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=0,
        ),
    )
    old = os.environ.get(OUTPUT_ENGINE_ENV)
    os.environ[OUTPUT_ENGINE_ENV] = "0"
    try:
        return tuner.fit()
    finally:
        if old is None:
            os.environ.pop(OUTPUT_ENGINE_ENV, None)
        else:
            os.environ[OUTPUT_ENGINE_ENV] = old


# ------------------------------------------------------------------ an Optuna search
def _optuna_search_class():
    from ray.tune.search.optuna import OptunaSearch

    class EvalEpochOptunaSearch(OptunaSearch):
        """OptunaSearch that hears only the results carrying the objective (the epochs a search trial
        evaluates), and whose saved state leaves out the define-by-run space (code, not state)."""

        def on_trial_result(self, trial_id, result):
            if self.metric in result:
                super().on_trial_result(trial_id, result)

        def save(self, checkpoint_path):
            import pickle
            with open(checkpoint_path, "wb") as f:
                pickle.dump({k: v for k, v in self.__dict__.items() if k != "_space"}, f)

    return EvalEpochOptunaSearch


def run_search(search, spec_of, *, name: str, storage: str, resources: dict, callbacks: list,
               max_failures: int = 3, stop=None):
    """Run `search` (a study.spec.Search): Optuna's TPE sampler (Ray Tune's OptunaSearch, define-by-run)
    proposes the fields of each trial; ASHA (time = epoch) stops weak trials at its rungs, which are
    epochs the search trials evaluate. Trial key = `search.key(Optuna trial number)`, numbers counted
    in the order Optuna is asked, so a Ray restart of a trial finds its checkpoint folder again.
    `spec_of(key, config, tags)` makes the trainable's spec (as for grid trials)."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler

    base = search.base
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line in the driver log

    def space(ot_trial):  # runs in the driver; only suggestions, no work
        fields, tags = search.suggest(ot_trial)
        spec = spec_of(search.key(ot_trial.number), base.replace(**fields),
                       {**search.tags, **tags, "setting_order": ot_trial.number})
        spec["objective"] = {"metric": search.metric, "min_of": list(search.objective_of)}
        return {"trial": spec}

    searcher = _optuna_search_class()(space=space, metric=search.metric, mode=search.mode,
                                      sampler=optuna.samplers.TPESampler(seed=search.sampler_seed))
    scheduler = ASHAScheduler(time_attr="epoch", metric=search.metric, mode=search.mode, max_t=base.epochs,
                              grace_period=search.grace_period, reduction_factor=search.reduction_factor)
    # Search trials carry the objective only on the epochs they evaluate; Tune's strict check would
    # reject the other epochs' results. ASHA and the searcher above skip results without it.
    old = os.environ.get(STRICT_METRICS_ENV)
    os.environ[STRICT_METRICS_ENV] = "1"
    try:
        return run_tuner([], name=f"{name}/search", storage=storage, resources=resources,
                         callbacks=callbacks, max_failures=max_failures, search_alg=searcher,
                         scheduler=scheduler, param_space={}, num_samples=search.n_trials, stop=stop)
    finally:
        _restore_env(STRICT_METRICS_ENV, old)
