"""`python -m study.ablate`: which of the paper's fixed choices matter — T map, IQA measure, mixture
proportions, distortion levels — and does IQA-LS beat plain label smoothing; as grids or an Optuna
search, recorded in MLflow like `study.table2` (one parent run, one child run per trial).

Examples:
  python -m study.ablate --tmap --preset smoke --data ../shared/data/cifar10-jpeg   # a few minutes
  python -m study.ablate --iqa --ratios --preset quick --data ../shared/data/cifar10-jpeg
  python -m study.ablate --tmap --tmaps identity,power:gamma=2,affine:a=0.2 --train-set mix_noise
  python -m study.ablate --search optuna --trials 20 --objective worst --preset quick

The grids are data in search_spaces/ablate_{tmap,iqa,ratios,levels,search}.py (what each measures,
its launch command and what to expect). Several flags run their union in one study; every child run
is tagged `iqa_ls.ablation` and `iqa_ls.setting`. The tables and plots (analysis.ablate) are printed
and logged to the parent run at the end; `python -m analysis.ablate --study NAME` rebuilds them.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from search_spaces import (
    ablate_iqa,
    ablate_levels,
    ablate_ratios,
    ablate_search,
    ablate_tmap,
)
from study.flags import MAX_TRIALS, add_common_flags, make_config, schedule_fields, seed_fields, val_size
from study.runner import check_data_sizes, check_start, main_wrapper, run_study
from study.spec import Search, StudyError, StudySpec, Trial
from trainables.config import NUM_CLASSES, TRAIN_SETS

GRIDS = ("tmap", "iqa", "ratios", "levels")  # grid ablations, in the order they run and are tabled
SEARCHERS = ("optuna",)
NAME_PLACEHOLDER = "ablate-<flags>"


def trial_tags(config: dict) -> dict:
    return {k: config[k] for k in ("strategy", "train_set", "regularization", "iqa_metric", "tmap", "seed")}


# ------------------------------------------------------------------ flag values
def _items(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _number(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise StudyError(f"{flag} {text!r} is not allowed; allowed: numbers") from None


def parse_tmaps(text: str) -> tuple[tuple[str, dict], ...]:
    """'identity,power:gamma=2,logistic:k=5:s0=0.6' -> ((name, params), ...); names and parameters
    are checked later by TrialConfig (one line naming the value and what is allowed)."""
    out = []
    for item in _items(text):
        name, *kvs = item.split(":")
        params = {}
        for kv in kvs:
            k, eq, v = kv.partition("=")
            if not eq or not k:
                raise StudyError(f"--tmaps {item!r} is not allowed; allowed: NAME[:PARAM=VALUE...], "
                                 "e.g. power:gamma=2")
            params[k] = _number("--tmaps", v)
        out.append((name, params))
    if not out:
        raise StudyError("--tmaps is empty; allowed: NAME[:PARAM=VALUE...],... e.g. identity,power:gamma=2")
    return tuple(out)


def parse_metrics(text: str) -> list[str]:
    """--metrics 'ssim,gmsm' -> ['ssim', 'gmsm']; the names are checked by search_spaces.ablate_iqa."""
    items = _items(text)
    if not items:
        raise StudyError(f"--metrics {text!r} is empty; allowed: IQA metric names, e.g. ssim,gmsm")
    return items


def parse_shares(text: str) -> tuple[float, ...]:
    shares = tuple(_number("--pristine-shares", v) for v in _items(text))
    bad = [p for p in shares if not 0.0 <= p <= 1.0]
    if not shares or bad:
        raise StudyError(f"--pristine-shares {text!r} is not allowed; allowed: shares in [0, 1], e.g. 0.2,0.6")
    return shares


def parse_splits(text: str) -> tuple[tuple[float, float, float], ...]:
    out = []
    for item in _items(text):
        parts = item.split(":")
        vals = tuple(_number("--level-splits", v) for v in parts)
        if len(vals) != 3 or any(v < 0 for v in vals) or sum(vals) <= 0:
            raise StudyError(f"--level-splits {item!r} is not allowed; allowed: L1:L2:L3 with three "
                             "non-negative numbers, not all 0, e.g. 15:15:10")
        out.append(vals)
    if not out:
        raise StudyError("--level-splits is empty; allowed: L1:L2:L3,... e.g. 15:15:10,1:1:1")
    return tuple(out)


def slug(text: str) -> str:
    """A trial-key part from a setting label: 'power(gamma=2)' -> 'power-gamma-2'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


# ------------------------------------------------------------------ the plan
def selected(args) -> list[str]:
    return [g for g in GRIDS if getattr(args, g)] + (["search"] if args.search else [])


def check_flags(args) -> list[str]:
    """Every flag-level refusal, before any data is read."""
    what = selected(args)
    if args.search is not None and args.search not in SEARCHERS:
        raise StudyError(f"--search {args.search} is not allowed; allowed: {', '.join(SEARCHERS)}")
    if not what:
        raise StudyError("nothing to run; choose one or more of --tmap --iqa --ratios --levels "
                         "--search optuna")
    if args.search is None and (args.trials is not None or args.objective is not None):
        raise StudyError("--trials and --objective belong to --search optuna")
    if args.search is not None:
        if args.trials is None or not 1 <= args.trials <= MAX_TRIALS:
            raise StudyError(f"--trials {args.trials} is not allowed; allowed: an integer >= 1 and <= {MAX_TRIALS} "
                             "(the number of Optuna trials)")
        if (args.objective if args.objective is not None else "mean") not in ablate_search.OBJECTIVES:
            raise StudyError(f"--objective {args.objective} is not allowed; allowed: "
                             f"{', '.join(ablate_search.OBJECTIVES)}")
    allowed_sets = [s for s, types in TRAIN_SETS.items() if types]
    if args.train_set not in allowed_sets:
        raise StudyError(f"--train-set {args.train_set} is not allowed; allowed: {', '.join(allowed_sets)} "
                         "(a mixture: the ablations vary how distorted images are labelled)")
    for flag, grid in (("tmaps", "tmap"), ("metrics", "iqa"), ("pristine_shares", "ratios"),
                       ("level_splits", "ratios")):
        if getattr(args, flag) is not None and not getattr(args, grid):
            raise StudyError(f"--{flag.replace('_', '-')} belongs to --{grid}")
    return what


def grid_settings(args, grid: str) -> list[dict]:
    if grid == "tmap":
        return ablate_tmap.settings(parse_tmaps(args.tmaps) if args.tmaps is not None else ablate_tmap.TMAPS)
    if grid == "iqa":
        return ablate_iqa.settings(parse_metrics(args.metrics) if args.metrics is not None else None)
    if grid == "ratios":
        shares = (parse_shares(args.pristine_shares) if args.pristine_shares is not None
                  else ablate_ratios.PRISTINE_SHARES)
        splits = parse_splits(args.level_splits) if args.level_splits is not None else ablate_ratios.LEVEL_SPLITS
        return ablate_ratios.settings(shares, splits)
    return ablate_levels.settings()


def matched_controls(args, base: dict) -> dict[int, tuple[float, float]]:
    """seed -> (mean T of the IQA-LS reference in epoch 1, eps of uniform LS with that q(y)): built
    from the same data, subset, mixture draw and scores as that trial's first epoch."""
    from trainables.prep import epoch_targets

    out = {}
    for seed in range(args.seeds):
        cfg = make_config({**base, **ablate_iqa.MATCH_TO, **seed_fields(args, seed), "device": "cpu"})
        mean_t = float(epoch_targets(cfg).mean())
        eps = ablate_iqa.matched_epsilon(mean_t, NUM_CLASSES)
        if not 0.0 <= eps < 1.0:
            raise StudyError(f"the matched uniform control needs 0 <= eps < 1, but IQA-LS's mean T of "
                             f"{mean_t:.4f} (seed {seed}) gives eps = {eps:.4f}")
        out[seed] = (mean_t, eps)
    return out


def build(args, data: str):
    """(grid trials, the search or None, plan lines) on `data` (--data resolved); every value is
    checked before anything runs."""
    fields = schedule_fields(args)
    base = {**fields, "data": data, "train_set": args.train_set, "strategy": 0}
    trials, plan = grid_trials(args, {**base, "val_size": val_size(args)})
    search = None
    if args.search:
        search, lines = build_search(args, base, fields)
        plan += lines
    return trials, search, plan


def grid_trials(args, grid_base: dict) -> tuple[list[Trial], list[str]]:
    """The trials of the chosen grids (their union, in GRIDS order) and their plan lines."""
    plan, todo = [], []
    for grid in [g for g in GRIDS if getattr(args, g)]:
        settings = grid_settings(args, grid)
        for order, st in enumerate(settings):
            for seed in range(args.seeds):
                cfg = make_config({**grid_base, **st["fields"], **seed_fields(args, seed)})  # refuses bad values
                todo.append((grid, order, st, seed, cfg))
        plan.append(f"--{grid}: {len(settings)} settings x {args.seeds} seed(s): "
                    + "; ".join(s["setting"] for s in settings))
    matched = {}
    if any(st.get("match") for _, _, st, _, _ in todo):
        matched = matched_controls(args, grid_base)
        plan.append("uniform LS control: " + "; ".join(
            f"seed {s}: eps = {eps:.5f} so that q(y) = {mt:.5f} = IQA-LS (ssim, identity) mean T in epoch 1"
            for s, (mt, eps) in matched.items()))
    trials = []
    for grid, order, st, seed, cfg in todo:
        tags = {"ablation": grid, "setting": st["setting"], "setting_order": order,
                "ablated": json.dumps(st["ablated"], sort_keys=True)}
        if st.get("match"):
            mean_t, eps = matched[seed]
            cfg = cfg.replace(ls_epsilon=eps)
            tags.update(matched_mean_t=repr(mean_t), matched_to=json.dumps(ablate_iqa.MATCH_TO, sort_keys=True))
        trials.append(Trial(f"{grid}-{slug(st['setting'])}-seed{seed}", cfg, tags,
                            title=f"{grid} {st['setting']} seed{seed}"))
    return trials, plan


def build_search(args, base: dict, fields: dict) -> tuple[Search, list[str]]:
    """--search optuna: the Search (selecting on a validation split) and its plan lines."""
    from trainables.data import load_split, split_rows

    objective = args.objective or "mean"
    grace = ablate_search.grace_period(fields["epochs"])
    pool = split_rows(base["data"], "train")  # from the parquet footer: nothing decoded before the checks
    if pool is None:
        pool = load_split(base["data"], "train").images.shape[0]
    n_val = val_size(args, ablate_search.default_val_size(pool, fields.get("test_subset", 0)))
    if n_val == 0:
        raise StudyError("--val-size 0 is not allowed with --search: the search would select on the test "
                         "sets; allowed: an integer >= 1 (default: "
                         f"{ablate_search.default_val_size(pool, fields.get('test_subset', 0))})")
    search_base = make_config({**base, **seed_fields(args, 0), "val_size": n_val, "eval_every": grace,
                               "regularization": "iqa_ls"})
    space = json.dumps(ablate_search.SPACE, sort_keys=True)
    search = Search(base=search_base, n_trials=args.trials, suggest=ablate_search.suggest,
                    objective_of=ablate_search.OBJECTIVES[objective], grace_period=grace,
                    reduction_factor=ablate_search.REDUCTION_FACTOR, sampler_seed=ablate_search.SAMPLER_SEED,
                    tags={"ablation": "search"},
                    parent_tags={"search": json.dumps({
                        "searcher": args.search, "trials": args.trials, "objective": objective,
                        "objective_of": list(ablate_search.OBJECTIVES[objective]),
                        "grace_period": grace, "reduction_factor": ablate_search.REDUCTION_FACTOR,
                        "sampler_seed": ablate_search.SAMPLER_SEED, "space": json.loads(space),
                        "conditional": ablate_search.CONDITIONAL}, sort_keys=True)})
    rungs = []
    r = grace
    while r < fields["epochs"]:
        rungs.append(r)
        r *= ablate_search.REDUCTION_FACTOR
    return search, [
        f"--search optuna: {args.trials} trials (TPE, seed {ablate_search.SAMPLER_SEED}) over the T "
        f"family + parameters and the pristine share; objective {objective} = min of "
        f"{', '.join(ablate_search.OBJECTIVES[objective])}; evaluated every {grace} epoch(s); ASHA "
        f"stops at epochs {', '.join(map(str, rungs)) or '(none: too few epochs)'} the trials "
        f"below the best 1/{ablate_search.REDUCTION_FACTOR}; seed 0; keys search-<n>",
        f"--search selects on a validation split of {n_val} images held out of the {pool}-image "
        "training pool (never trained on; val_* metrics); the test sets are evaluated once, at "
        "each trial's last epoch, and only reported"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("ablations (several: their union, in one study)")
    g.add_argument("--tmap", action="store_true", help="each T map of the registry (search_spaces/ablate_tmap.py)")
    g.add_argument("--iqa", action="store_true", help="each IQA metric + level oracle + matched uniform LS "
                   "(search_spaces/ablate_iqa.py)")
    g.add_argument("--ratios", action="store_true", help="pristine share and level split (ablate_ratios.py)")
    g.add_argument("--levels", action="store_true", help="single levels vs all three (ablate_levels.py)")
    g.add_argument("--search", default=None, metavar="optuna", help="an Optuna search (ablate_search.py)")
    g.add_argument("--trials", type=int, default=None, help="--search: number of Optuna trials")
    g.add_argument("--objective", default=None, help="--search: mean | pristine | worst (default mean)")
    o = p.add_argument_group("grid values (default: the module's)")
    o.add_argument("--train-set", default=ablate_tmap.TRAIN_SET, help="training mixture (default mix_all3)")
    o.add_argument("--tmaps", default=None, help="--tmap: NAME[:PARAM=VALUE...],... e.g. identity,power:gamma=2")
    o.add_argument("--metrics", default=None, help="--iqa: metric names, e.g. ssim,gmsm")
    o.add_argument("--pristine-shares", default=None, help="--ratios: e.g. 0.2,0.6")
    o.add_argument("--level-splits", default=None, help="--ratios: L1:L2:L3,... e.g. 15:15:10,1:1:1")
    add_common_flags(p, default_name=NAME_PLACEHOLDER)
    args = p.parse_args(argv)

    def go():
        from trainables.data import resolve_source

        what = check_flags(args)
        if args.name == NAME_PLACEHOLDER:  # the default name says what the study runs
            args.name = "ablate-" + "-".join(what)
        # the command's edge: the spec (every flag of how the study runs, checked; its flags as given are
        # what the study records) and the trials, from the final values; nothing below reads args
        spec = StudySpec.from_args(args)
        data = resolve_source(args.data)  # absolute: Ray workers do not share our cwd
        check_start(spec)  # before build: the --iqa grid's matched control reads the data
        check_data_sizes(spec, data, schedule_fields(args), val_size(args))  # the --iqa control trains on them
        trials, search, plan = build(args, data)

        def analyse(parent_run_id, out):
            from analysis.ablate import build_ablate, format_compact, format_console
            res = build_ablate(parent_run_id=parent_run_id, tracking_uri=spec.tracking_uri,
                               experiment=spec.experiment, out_dir=out)
            print(format_console(res) if spec.verbose else format_compact(res))  # the full tables: --verbose
            return res

        return run_study(spec, "ablate-" + "-".join(what), trials, trial_tags, analyse, plan, search=search)

    return main_wrapper(go)


if __name__ == "__main__":
    sys.exit(main())
