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
from study.flags import MAX_EPOCHS, add_common_flags, make_config, schedule_fields, seed_fields, val_size
from study.runner import check_data_sizes, main_wrapper, run_study
from study.spec import StudyError, StudySpec, Trial
from trainables.config import PROTOCOLS


def trial_tags(config: dict) -> dict:
    tags = {k: config[k] for k in ("strategy", "train_set", "regularization", "iqa_metric", "tmap", "seed")}
    return {**tags, "protocol": config.get("protocol", "scratch")}


def build_trials(args, data: str | None = None) -> list[Trial]:
    """The grid of the flags: the chosen strategies (--strategies) x seeds, from scratch, and with
    --protocol finetune each chosen IQA-LS strategy fine-tuned from its Original's final weights (key
    `s9-seed0-ft`), with --finetune-control each such Original continued one-hot as long
    (`s8-seed0-ft`: the epochs control). `data`: --data resolved (default: as given)."""
    fields = {**schedule_fields(args), "val_size": val_size(args)}
    plan = space.plan(args.seeds, strategies=parse_strategies(getattr(args, "strategies", None)),
                      protocols=parse_protocols(getattr(args, "protocol", None)),
                      control=bool(getattr(args, "finetune_control", False)))
    tune = finetune_fields(args, fields["epochs"], any(t.get("protocol") == "finetune" for t in plan))
    data = data if data is not None else args.data
    return [Trial(space.key(t), make_config({**fields, **t, **seed_fields(args, t["seed"]), "data": data,
                                             **(tune if t.get("protocol") == "finetune" else {})}),
                  title=space.title(t["strategy"], t["seed"], t.get("protocol", "scratch")))
            for t in plan]


def parse_strategies(text: str | None) -> tuple[int, ...]:
    """--strategies "1,8,9" -> (1, 8, 9); None -> all nine. Unknown numbers refused in one line."""
    if text is None:
        return tuple(space.STRATEGIES)
    items = [v.strip() for v in str(text).split(",") if v.strip()]
    bad = [v for v in items if not v.isdigit() or int(v) not in space.STRATEGIES]
    if bad or not items or len(set(items)) != len(items):
        raise StudyError(f"--strategies {text!r} is not allowed; allowed: distinct Table 2 rows "
                         f"{','.join(map(str, space.STRATEGIES))} (e.g. 1,8,9)")
    return tuple(sorted(int(v) for v in items))


def parse_protocols(text: str | None) -> tuple[str, ...]:
    """--protocol scratch | finetune | scratch,finetune (None -> scratch)."""
    items = [v.strip() for v in ("scratch" if text is None else text).split(",") if v.strip()]
    if not items or any(v not in PROTOCOLS for v in items) or len(set(items)) != len(items):
        raise StudyError(f"--protocol {text!r} is not allowed; allowed: scratch, finetune or "
                         "scratch,finetune")
    return tuple(p for p in PROTOCOLS if p in items)


def finetune_fields(args, epochs: int, finetune: bool) -> dict:
    """The fine-tune's TrialConfig fields from --finetune-epochs (default: a quarter of the
    schedule's epochs, at least 1), --finetune-lr, --finetune-lr-decay-every; a fine-tune flag
    without a fine-tune in the grid is refused (it would be silently ignored)."""
    names = ("finetune_epochs", "finetune_lr", "finetune_lr_decay_every", "finetune_control")
    given = {f: getattr(args, f, None) for f in names if getattr(args, f, None) is not None
             and getattr(args, f, None) is not False}
    if not finetune:
        if given:
            flag = next(iter(given))
            raise StudyError(f"--{flag.replace('_', '-')} is not allowed without a fine-tune; allowed: "
                             "--protocol finetune (or scratch,finetune) with an IQA-LS strategy in "
                             "--strategies")
        return {}
    epochs_, lr, every = (getattr(args, f, None) for f in names[:3])
    for flag, v, ok, allowed in (("--finetune-epochs", epochs_, epochs_ is None or 1 <= epochs_ <= MAX_EPOCHS,
                                  f"an integer >= 1 and <= {MAX_EPOCHS}"),
                                 ("--finetune-lr", lr, lr is None or lr > 0, "a number > 0"),
                                 ("--finetune-lr-decay-every", every, every is None or every >= 0,
                                  "an integer >= 0 (0 = constant lr)")):
        if not ok:
            raise StudyError(f"{flag} {v} is not allowed; allowed: {allowed}")
    out = {"finetune_epochs": epochs_ or default_finetune_epochs(epochs)}
    if lr is not None:
        out["finetune_lr"] = lr
    if every is not None:
        out["finetune_lr_decay_every"] = every
    return out


def default_finetune_epochs(epochs: int) -> int:
    """A quarter of the from-scratch schedule (docs/paper-mapping.md: the paper gives no length)."""
    return max(1, round(epochs / 4))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.table2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, default_name="table2")
    p.add_argument("--strategies", default=None, metavar="N,...",
                   help="only these Table 2 rows (default all nine, 1-9), e.g. 1,8,9")
    p.add_argument("--protocol", default=None, metavar="scratch|finetune|scratch,finetune",
                   help="how IQA-LS trains (docs/paper-mapping.md): scratch (default; Sec. 4.3.3) or "
                   "finetune (the introduction: from the final weights of the Original on the same training "
                   "set and seed, --finetune-epochs more), or both in one study sharing the Original parents")
    p.add_argument("--finetune-epochs", type=int, default=None, metavar="F",
                   help="epochs a fine-tune trains after its parent's (default a quarter of --epochs)")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="the fine-tune's learning rate (default 0.01: the paper's after its first decay)")
    p.add_argument("--finetune-lr-decay-every", type=int, default=None, metavar="N",
                   help="x0.1 every N fine-tune epochs (default 0: constant)")
    p.add_argument("--finetune-control", action="store_true",
                   help="also continue each fine-tuned IQA-LS strategy's Original one-hot for the same "
                   "epochs, lr and draws (the epochs control: IQA-LS fine-tuned vs Original trained as long)")
    args = p.parse_args(argv)

    def go():
        from trainables.data import resolve_source

        # the command's edge: the spec (every flag of how the study runs, checked; its flags as given are
        # what the study records) and the trials, from the final values; nothing below reads args
        spec = StudySpec.from_args(args)
        data = resolve_source(args.data)  # absolute: Ray workers do not share our cwd
        check_data_sizes(spec, data, schedule_fields(args), val_size(args))  # before the configs' imports
        trials = build_trials(args, data)

        def analyse(parent_run_id, out):
            from analysis.table2 import build_table2, format_compact, format_console
            res = build_table2(parent_run_id=parent_run_id, tracking_uri=spec.tracking_uri,
                               experiment=spec.experiment, out_dir=out)
            print(format_console(res) if spec.verbose else format_compact(res))  # the full tables: --verbose
            return res

        return run_study(spec, "table2", trials, trial_tags, analyse)

    return main_wrapper(go)


if __name__ == "__main__":
    sys.exit(main())
