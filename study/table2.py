"""`python -m study.table2`: the nine strategies of Table 2 as Ray Tune trials, recorded in MLflow,
and Table 2 rebuilt beside the paper's.

Examples:
  python -m study.table2 --preset smoke --data ../shared/data/cifar10-jpeg   # pipeline check, ~3 min
  python -m study.table2 --preset demo --data ../shared/data/cifar10-jpeg    # the paper's effect, ~30 min
  python -m study.table2 --preset quick --data ../shared/data/cifar10-jpeg   # about an hour, 2-core CPU
  python -m study.table2 --preset paper --seeds 3 --address auto --storage s3://BUCKET/ray-results
"""
from __future__ import annotations

import argparse
import sys

from search_spaces import table2 as space
from study.runner import (
    Trial,
    add_common_flags,
    main_wrapper,
    make_config,
    run_study,
    schedule_fields,
    seed_fields,
    val_size,
)
from study.spec import StudySpec


def trial_tags(config: dict) -> dict:
    return {k: config[k] for k in ("strategy", "train_set", "regularization", "iqa_metric", "tmap", "seed")}


def build_trials(args) -> list[Trial]:
    fields = {**schedule_fields(args), "val_size": val_size(args)}
    data = args.data
    return [Trial(f"s{t['strategy']}-seed{t['seed']}",
                  make_config({**fields, **t, **seed_fields(args, t["seed"]), "data": data}),
                  title=space.title(t["strategy"], t["seed"]))
            for t in space.grid(args.seeds)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.table2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, default_name="table2")
    args = p.parse_args(argv)

    def go():
        spec = StudySpec.from_args(args)  # every flag of how the study runs, checked; args stop here
        from trainables.data import resolve_source
        args.data = resolve_source(args.data)  # absolute: Ray workers do not share our cwd
        trials = build_trials(args)

        def analyse(parent_run_id, out):
            from analysis.table2 import build_table2, format_console
            res = build_table2(parent_run_id=parent_run_id, tracking_uri=spec.tracking_uri,
                               experiment=spec.experiment, out_dir=out)
            print(format_console(res))
            return res

        return run_study(spec, "table2", trials, trial_tags, analyse)

    return main_wrapper(go)


if __name__ == "__main__":
    sys.exit(main())
