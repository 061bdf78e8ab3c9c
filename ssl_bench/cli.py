"""The ``ssl-bench`` command line (also ``python -m ssl_bench``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

#: ``ssl-bench probe`` is the linear probe's subcommand under its familiar name.
ALIASES = {"probe": "linear"}
#: ``pretrain`` is the task-independent pretraining command (``run --protocols pretrain`` still
#: runs the protocol inside a task's run).
CORE_COMMANDS = ("run", "results", "plugins", "pretrain", "plot", "status")


#: Commands that list or read what exists: they need the names plugins register, not their
#: code, so they start from the plugin index without importing torch.
LISTING_COMMANDS = ("plugins", "results", "plot")


def command_word(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (``None`` for none), found before any parsing."""
    i = 0
    while i < len(argv):
        if argv[i] == "--plugins-dir":
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return argv[i]
    return None


def _registry(argv: list[str], listing: bool):
    """The registry, with ``--plugins-dir`` applied: plugins add protocols and commands, so it is
    needed before the parser can be built.  ``listing``: only names and help lines are needed
    (``--help``, :data:`LISTING_COMMANDS`), so plugins the index knows are not imported."""
    from .plugin_index import index_path
    from .registry import Registry, current_registry, get_registry

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins-dir", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    if known.plugins_dir or current_registry() is None:
        return Registry(plugins_dirs=known.plugins_dir, index=index_path(), lazy=listing)
    return get_registry()  # one set in code (tests, notebooks) is used as it is


def _common_run_args(p: argparse.ArgumentParser, protocols_default: str | None, protocols: list[str],
                     launchers: list[str]) -> None:
    p.add_argument("--model", "-m", help="registered model name (see `ssl-bench plugins`); an ssl-bench "
                                         "--checkpoint names its own")
    p.add_argument("--task", "-t", required=protocols_default is None,
                   help="task name, or a comma list of tasks" + (" (or --suite)" if protocols_default else ""))
    p.add_argument("--preset", "-p", help="size preset of the model (tiny, small, base, ...)")
    p.add_argument("--config", "-c", action="append", default=[], metavar="YAML",
                   help="YAML file of settings (repeatable; later files win)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. encoder.depth=6 or decoder=global; "
                        "a comma list (masker.ratio=0.7,0.8) runs once per value")
    p.add_argument("--data-dir", action="append", default=[], metavar="DIR|TASK=DIR",
                   help="where the task's data lives (or is downloaded/built); TASK=DIR for one of several tasks")
    p.add_argument("--results", default=os.environ.get("SSL_BENCH_RESULTS", "results"),
                   help="results root (default: ./results or $SSL_BENCH_RESULTS)")
    if protocols_default is not None:
        p.add_argument("--protocols", default=protocols_default,
                       help=f"comma list of {', '.join(protocols)} (default: {protocols_default})")
    p.add_argument("--checkpoint", metavar="CKPT[,CKPT...]",
                   help="start from a checkpoint instead of pretraining: a file (official or ssl-bench), a Hugging "
                        "Face directory, torchaudio:BUNDLE (e.g. torchaudio:HUBERT_BASE, from the torch hub cache), "
                        "or the id `ssl-bench pretrain` printed; a comma list runs once per checkpoint, like a "
                        "--set sweep")
    p.add_argument("--splits", help="comma list of split names to run (default: all, e.g. every fold)")
    p.add_argument("--seed", type=int, help="random seed (default 0; also --set seed=N)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--strict", action="store_true", help="unreadable clips are errors instead of counted skips")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="compute everything again: finished runs become new runs, pretraining starts afresh "
                        "instead of continuing from its last checkpoint")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _verify_arg(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (model, preset, device, splits, the work and an estimate of the time) and "
                        "stop, reading no audio")
    _tracking_args(p)
    g = p.add_argument_group("launching (a sweep is units: features, encoders, evaluations per run and split)")
    g.add_argument("--launcher", default="local", choices=launchers,
                   help="where units run: local (this process; a pool with --jobs), slurm (submitit), ... "
                        "(default: local)")
    g.add_argument("--jobs", "-j", type=int, default=1, help="units at once (local: processes; default 1)")
    g.add_argument("--threads", type=int, help="torch threads per job (default: cores / jobs for local pools; "
                                               "jobs x threads may not exceed the cores)")
    g.add_argument("--launch", action="append", default=[], metavar="KEY=VALUE|YAML",
                   help="launcher setting (slurm: partition=gpu, time_min=120, gpus_per_job=8, ...), or a YAML "
                        "file of them")
    g.add_argument("--detach", action="store_true", help="submit and return; `ssl-bench status RESULTS` reports")


def _verify_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify", action="store_true",
                   help="trust no cached digest or checksum: read every audio file and cache file again (a file "
                        "written in place is found without it; this also finds one changed below the filesystem)")


def _tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow", nargs="?", const="default", default=os.environ.get("SSL_BENCH_MLFLOW") or None,
                   metavar="URI", help="also log params, per-epoch metrics and rows to MLflow (default store: "
                                       "<results>/mlflow.db or <results>/mlruns; or $SSL_BENCH_MLFLOW)")
    p.add_argument("--tensorboard", nargs="?", const="default", default=os.environ.get("SSL_BENCH_TENSORBOARD") or None,
                   metavar="DIR", help="also write TensorBoard scalars (default <results>/tensorboard; or "
                                       "$SSL_BENCH_TENSORBOARD)")


def _track(args: argparse.Namespace) -> dict[str, str]:
    from .tracking import DEFAULT

    out = {}
    for name in ("mlflow", "tensorboard"):
        value = getattr(args, name, None)
        if value and str(value).lower() not in ("0", "false", "no", "off"):
            out[name] = DEFAULT if str(value).lower() in ("1", "true", "yes", "on") else str(value)
    return out


def build_parser(registry: Any = None, only: str | None = None) -> argparse.ArgumentParser:
    """The ``ssl-bench`` parser.  ``only``: the one subcommand that will be parsed (``""`` for
    none): a plugin's other commands are listed by name and help line, without importing them."""
    from .config import DEFAULT_PROTOCOLS

    if registry is None:
        from .registry import get_registry

        registry = get_registry()
    protocols = registry.names("protocol")
    launchers = registry.names("launcher")
    parser = argparse.ArgumentParser(
        prog="ssl-bench",
        description="Benchmark self-supervised audio representations: pretrain, fine-tune and "
                    "linear-probe models such as AudioMAE and AST on audio tasks.",
    )
    parser.add_argument("--plugins-dir", action="append", default=[], metavar="DIR",
                        help="also load single-file plugins from DIR (or $SSL_BENCH_PLUGINS_DIR)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="pretrain, fine-tune and linear-probe a model on a task, split by split")
    _common_run_args(p, ",".join(DEFAULT_PROTOCOLS), protocols, launchers)
    p.add_argument("--suite", metavar="NAME[@VERSION]",
                   help="run a registered suite (its tasks, protocols and settings; see `ssl-bench plugins`) "
                        "instead of --task/--protocols")
    # one subcommand per registered protocol that wants one: `ssl-bench knn ...` runs only it
    subcommands = {n: n for n in protocols if registry.get("protocol", n).listing.get("subcommand", True)}
    subcommands.update({alias: target for alias, target in ALIASES.items() if target in protocols})
    for name, proto in sorted(subcommands.items()):
        if name in CORE_COMMANDS:
            continue
        text = registry.get("protocol", proto).listing.get("help") or f"only the {proto} protocol"
        sp = sub.add_parser(name, help=text)
        _common_run_args(sp, None, protocols, launchers)
        sp.set_defaults(protocols=proto, command="run")

    p = sub.add_parser("pretrain", help="pretrain a task-independent encoder on a corpus, once; "
                                        "evaluate it later with run --checkpoint ID")
    p.add_argument("--model", "-m", required=True, help="registered model name (see `ssl-bench plugins`)")
    p.add_argument("--corpus", required=True, metavar="DIR|task:NAME",
                   help="a folder of audio, or task:NAME (the task's unlabeled corpus, else its clips no split "
                        "tests on)")
    p.add_argument("--preset", "-p", help="size preset of the model (tiny, small, base, ...)")
    p.add_argument("--config", "-c", action="append", default=[], metavar="YAML", help="YAML file of settings")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override; a comma list (masker.ratio=0.6,0.8) makes one encoder per value")
    p.add_argument("--clip-seconds", type=float,
                   help="clip length of the corpus (default: the task's, or the median of the folder's clips)")
    p.add_argument("--name", help="readable name of the encoder (the init column of its rows); {hash} is "
                                  "replaced by the pretraining hash")
    p.add_argument("--data-dir", help="where task:NAME's data lives")
    p.add_argument("--results", default=os.environ.get("SSL_BENCH_RESULTS", "results"),
                   help="results root; the encoder is cached under <results>/.cache/pretrain/")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start afresh")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _verify_arg(p)
    _tracking_args(p)

    p = sub.add_parser("results", help="show the results table (mean, std, n, 95%% interval)")
    p.add_argument("root", nargs="*", metavar="ROOT",
                   help="results roots, read as one table (runs deduplicated by id; default: ./results or "
                        "$SSL_BENCH_RESULTS)")
    p.add_argument("--compare", nargs="+", metavar="KEY",
                   help="config keys to pivot on (e.g. masker.ratio), with a paired test against --baseline")
    p.add_argument("--baseline", metavar="VALUE", help="the --compare value the others are tested against "
                                                       "(default: the first; comma-joined for several keys)")
    p.add_argument("--board", action="store_true",
                   help="leaderboard: model/encoder x task, each task's primary metric with its 95%% interval")
    p.add_argument("--suite", metavar="NAME[@VERSION]",
                   help="only this suite's rows; with --board, encoders ranked by their mean over its tasks")
    p.add_argument("--compute", action="store_true",
                   help="the compute ledger beside the scores: wall time, CPU-hours, GPU-hours by device, peak "
                        "memory, per unit of work and in total")
    p.add_argument("--format", "-f", default="table", choices=["table", "md", "csv", "latex"])
    p.add_argument("--raw", action="store_true", help="every row instead of the summary over splits and seeds")
    p.add_argument("--model", help="only this model")
    p.add_argument("--task", help="only this task")
    p.add_argument("--protocol", help="only this protocol")
    p.add_argument("--run", action="append", metavar="ID", help="only this run (its id, the short id the tables "
                                                                "show, or a prefix; repeatable)")
    p.add_argument("--since", metavar="DATE", help="only runs started at or after DATE (UTC; 2026-12-01 or "
                                                   "2026-12-01T14:00)")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="only runs whose setting KEY is VALUE (masker.ratio=0.8; repeatable)")

    p = sub.add_parser("plot", help="write PNG plots: the board (encoders x tasks), ablation bars, per-layer probe "
                                    "curves, label-efficiency curves, training curves")
    p.add_argument("root", nargs="*", metavar="ROOT", help="results roots, read as one table (default: ./results "
                                                            "or $SSL_BENCH_RESULTS)")
    p.add_argument("--out", "-o", default=None, help="output folder (default <first root>/plots)")
    p.add_argument("--kind", action="append", metavar="KIND",
                   help="only these plots (repeatable): board, ablation, layers, label-efficiency, curves "
                        "(default: all)")
    p.add_argument("--compare", nargs="+", metavar="KEY",
                   help="settings to draw ablation bars for (default: every setting that varies)")
    p.add_argument("--model", help="only this model")
    p.add_argument("--task", help="only this task")
    p.add_argument("--protocol", help="only this protocol")

    p = sub.add_parser("status", help="where the latest launch under a results root stands: each unit's state, "
                                      "failures with their logs, an estimate")
    p.add_argument("root", nargs="?", default=os.environ.get("SSL_BENCH_RESULTS", "results"))

    p = sub.add_parser("plugins", help="list plugins, where they come from and what they register")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    # commands plugins bring (register_commands), e.g. bench and reconstruct
    for name in registry.names("command"):
        entry = registry.get("command", name)
        if name in CORE_COMMANDS or name in subcommands:
            continue
        sp = sub.add_parser(name, help=entry.listing.get("help", ""), description=entry.listing.get("description"))
        if only is None or only == name:
            command = entry.factory
            command.add_arguments(sp)
            sp.set_defaults(plugin_command=command)
    return parser


# --------------------------------------------------------------------------- commands
def _names(text: str | None, flag: str) -> list[str] | None:
    """A comma list of names (``--task a,b``), or None when the flag was not given; a flag given
    nothing but commas is an error naming it."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        from .config import ConfigError

        raise ConfigError(f"{flag} {text!r}: no name in it; give one or a comma list")
    return names


def cmd_run(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_yaml, parse_overrides, resolve
    from .encoders import refuse_pretraining_settings
    from .files import cache_root, check_writable
    from .launch.sweep import launch_options, make_launcher, run_sweep
    from .launch.units import RunSpec
    from .model import check_config, checkpoint_model, checkpoint_settings, merge_checkpoint_settings
    from .provenance import command_line
    from .registry import get_registry

    registry = get_registry()
    known = registry.names("protocol")
    splits = _names(args.splits, "--splits")
    sweeps = parse_overrides(args.overrides)
    columns: dict[str, Any] = {}
    suite = getattr(args, "suite", None)
    if suite:  # the suite says which tasks, protocols, settings and splits
        from .suites import get_suite, pinned_conflicts

        given_flags = [flag for flag, value in (("--task", args.task), ("--splits", args.splits)) if value]
        if given_flags or args.protocols != _default_protocols():
            raise ConfigError(f"--suite {suite} chooses the tasks, protocols and splits itself; drop "
                              f"{', '.join(given_flags) or '--protocols'}")
        name, chosen = get_suite(suite, registry)
        clash = pinned_conflicts(chosen, sweeps)
        if clash:
            raise ConfigError(f"--set {clash[0]}: suite {name} v{chosen.version} pins it (a result with another value "
                              "would not be the suite's); run without --suite to vary it")
        entries = [(e.task, list(e.protocols), dict(e.settings), list(e.splits) if e.splits else None)
                   for e in chosen.tasks]
        columns = chosen.columns(name)
    else:
        tasks = _names(args.task, "--task")
        if not tasks:
            raise ConfigError("--task is required (or --suite NAME; `ssl-bench plugins` lists tasks and suites)")
        protocols = _names(args.protocols, "--protocols") or []
        entries = [(task, protocols, {}, splits) for task in tasks]
    for _, protocols, _, _ in entries:
        bad = [p for p in protocols if p not in known]
        if bad or not protocols:
            raise ConfigError(f"unknown protocol {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
    for task, *_ in entries:
        registry.get("task", task)  # an unknown task fails before any work, listing the known ones
    data_dirs = _data_dirs(args.data_dir, [task for task, *_ in entries], registry)
    extra: dict[str, Any] = {}
    if args.seed is not None:
        extra["seed"] = args.seed
    if args.device:
        extra["device"] = args.device
    if args.strict:
        extra["data.strict"] = True
    # resolve everything first: a typo in the last sweep value fails before any training
    # --checkpoint a,b sweeps like --set: files, Hugging Face directories or encoder ids
    checkpoints: list[Path | None] = [None]
    if args.checkpoint is not None:
        from .sources import resolve_checkpoint

        checkpoints = [resolve_checkpoint(c, cache_root(args.results)) for c in _names(args.checkpoint, "--checkpoint")]
    from .results import sweep_labels

    given = {k: v for f in args.config for k, v in load_yaml(f).items()}  # what the user set, files and --set
    runs: list[RunSpec] = []
    labels = sweep_labels(sweeps)  # what each run of a sweep varied, for its directory name
    for checkpoint in checkpoints:
        # an ssl-bench checkpoint names its model and preset; a flag given wins
        model, preset = (checkpoint_model(checkpoint, args.model, args.preset) if checkpoint
                         else (args.model, args.preset))
        if not model:
            raise ConfigError("--model is required (only an ssl-bench --checkpoint names its own model)")
        for task, protocols, pinned, task_splits in entries:
            # settings a checkpoint dictates (sizes, strides, stats) sit under the user's own overrides
            ckpt = checkpoint_settings(model, checkpoint, task) if checkpoint else {}
            for sweep, label in zip(sweeps, labels):
                overrides = merge_checkpoint_settings(ckpt, {**pinned, **sweep, **extra})
                config = resolve(model, preset=preset, task=task, files=args.config, overrides=overrides)
                if checkpoint:  # its encoder was pretrained already: a pretraining setting cannot change it
                    refuse_pretraining_settings({**given, **pinned, **sweep}, config, checkpoint)
                runs.append(RunSpec(config, protocols, data_dirs.get(task), task_splits,
                                    str(checkpoint) if checkpoint else None, label, columns, _track(args)))
    for run in runs:  # every setting checked (values, components, memory) before any data work
        check_config(run.config, protocols=run.protocols)
    if not args.dry_run:  # (a plan writes nothing)
        check_writable(args.results, "--results")
        check_writable(cache_root(args.results), "the cache folder (SSL_BENCH_CACHE)")
    def print_plans(todo: list[RunSpec]) -> None:  # what will run and about how long, before any audio is read
        from .plan import format_plans, plan_run

        if not todo:
            return
        timings: dict[str, Any] = {}  # runs that differ only in their seed are timed once
        plans = [plan_run(run.config, registry, run.protocols, data_dir=run.data_dir,
                          checkpoint=run.checkpoint is not None, splits=run.splits,
                          preset_given=bool(args.preset) or run.checkpoint is not None, timings=timings)
                 for run in todo]
        print(format_plans(plans), file=sys.stdout if args.dry_run else sys.stderr, flush=True)

    if args.dry_run:  # every run's plan (finished or not), and nothing else
        if _is_main_process():
            print_plans(runs)
        return 0
    options = launch_options(args.launch)
    launcher = make_launcher(args.launcher, options, jobs=args.jobs, threads=args.threads, registry=registry)
    outcome = run_sweep(runs, launcher, results=args.results, resume=args.resume, detach=args.detach,
                        plugins_dirs=list(args.plugins_dir), progress=not args.quiet, command=command_line(),
                        registry=registry, launcher_options=options, before_work=print_plans)
    if outcome.detached or not _is_main_process():
        return 0
    _print_runs(args.results, [Path(d).name for d in outcome.run_dirs if d is not None])
    if outcome.failed:
        print(f"\n{len(outcome.failed)} unit(s) did not finish (their lines above give the error and the log); "
              "the same command again runs only those", file=sys.stderr)
        return 1
    return 0


def _default_protocols() -> str:
    from .config import DEFAULT_PROTOCOLS

    return ",".join(DEFAULT_PROTOCOLS)


def _data_dirs(values: list[str] | None, tasks: list[str], registry: Any) -> dict[str, str | None]:
    """``--data-dir DIR`` (every task) and ``--data-dir TASK=DIR`` (that task) per task."""
    from .config import ConfigError

    default: str | None = None
    per_task: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if sep and name in registry.names("task"):
            per_task[name] = path
        elif default is None:
            default = value
        else:
            raise ConfigError(f"--data-dir {value}: a second folder for every task; give TASK=DIR for each task")
    return {task: per_task.get(task, default) for task in tasks}


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print_runs(root: str, run_ids: list[str]) -> None:
    from . import results

    df = results.load(root)
    df = df[df["run_id"].isin(run_ids)]
    if df.empty:
        print("no result rows were written")
        return
    print()
    print(results.format_table(results.split_table(df)))
    print(f"\nresults written to {', '.join(str(Path(root) / r) for r in run_ids)}")


def _roots(args: argparse.Namespace) -> list[str]:
    return list(args.root) if args.root else [os.environ.get("SSL_BENCH_RESULTS", "results")]


def _filtered(args: argparse.Namespace):
    """``(every row under args.root, the rows its filters keep)``."""
    from . import results

    roots = _roots(args)
    everything = df = results.load(roots if len(roots) > 1 else roots[0])
    for column in ("model", "task", "protocol"):
        if getattr(args, column, None):
            df = df[df[column] == getattr(args, column)]
    if not df.empty:
        df = results.select(df, runs=getattr(args, "run", None), since=getattr(args, "since", None),
                            where=getattr(args, "where", None), suite=getattr(args, "suite", None))
    return everything, df


def _nothing_matched(args: argparse.Namespace, everything: Any) -> str:
    """The line ``results`` and ``plot`` print when their filters leave no row: the filters,
    what the root holds and the values the filtered columns take there."""
    if everything.empty:
        return f"no results under {', '.join(_roots(args))}"
    asked, columns = [], []
    for column in ("model", "task", "protocol"):
        if getattr(args, column, None):
            asked.append(f"--{column} {getattr(args, column)}")
            columns.append(column)
    asked += [f"--run {r}" for r in getattr(args, "run", None) or []]
    if getattr(args, "suite", None):
        asked.append(f"--suite {args.suite}")
    if getattr(args, "since", None):
        asked.append(f"--since {args.since}")
    for condition in getattr(args, "where", None) or []:
        asked.append(f"--where {condition}")
        key = condition.partition("=")[0].strip()
        if key in everything.columns:
            columns.append(key)
    values = []
    for column in dict.fromkeys(columns):
        seen = sorted({str(v) for v in everything[column]})
        values.append(f"{column}: {', '.join(seen[:8])}{', ...' if len(seen) > 8 else ''}")
    runs = everything["run_id"].nunique()
    return (f"no rows match {' '.join(asked)} ({len(everything)} rows of {runs} run(s) under {', '.join(_roots(args))}"
            + (f"; {'; '.join(values)}" if values else "") + ")")


def _unfinished_note(df: Any) -> str | None:
    """A line naming the runs whose rows are shown though they have not finished."""
    if "status" not in df.columns:
        return None
    unfinished = df[df["status"] != "finished"].drop_duplicates("run_id")
    if unfinished.empty:
        return None
    said = ", ".join(f"{r} ({s})" for r, s in zip(unfinished["run"], unfinished["status"]))
    stopped = set(unfinished["status"]) & {"interrupted", "failed"}
    return (f"note: {said}: not finished; the rows written so far are shown with that status, never pooled with "
            "finished runs" + ("; run the same command again to finish a stopped run" if stopped else ""))


def cmd_results(args: argparse.Namespace) -> int:
    from . import results
    from .config import ConfigError

    everything, df = _filtered(args)
    if df.empty:
        print(_nothing_matched(args, everything))
        return 0
    if args.compute:
        from .ledger import ledger

        print(ledger(df).render(args.format))
        return 0
    if args.board:
        table = results.board(df, by_suite=bool(args.suite))
    elif args.compare:
        try:
            table = results.compare(df, args.compare, baseline=args.baseline)
        except KeyError as exc:
            raise ConfigError(str(exc).strip("'\"")) from None
    elif args.raw:
        table = df[[c for c in (*results.ROW_KEYS, *results.variant_columns(df)) if c in df.columns]]
    else:
        table = results.summary(df)
    print(results.format_table(table, args.format))
    note = _unfinished_note(df)
    if note:
        print(note, file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import get_registry

    info = get_registry().describe()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for p in info:
        which = f", sha256 {p['sha256'][:12]}" if p.get("sha256") else (f", {p['version']}" if p.get("version") else "")
        print(f"{p['name']}  ({p['origin']}{which})")
        for kind, names in sorted(p["registered"].items()):
            if kind == "suite":  # a suite is known by its version too
                names = [f"{n} (v{p.get('suites', {}).get(n, {}).get('version', '?')})" for n in names]
            print(f"    {kind + 's':<11} {', '.join(names)}")
        for name, model in p.get("models", {}).items():
            if model["presets"]:
                default = f" (default {model['default_preset']})" if model["default_preset"] else ""
                print(f"    {'presets':<11} {name}: {', '.join(model['presets'])}{default}"
                      + (f"; notes: {', '.join(model['notes'])} (--json)" if model["notes"] else ""))
        if p["error"]:
            print(f"    error: {p['error']}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import parse_overrides, resolve
    from .encoders import pretrain_on_corpus
    from .files import cache_root, check_writable
    from .model import check_config

    extra: dict[str, Any] = {}
    if args.seed is not None:
        extra["seed"] = args.seed
    if args.device:
        extra["device"] = args.device
    configs = [resolve(args.model, preset=args.preset, task=None, files=args.config, overrides={**sweep, **extra})
               for sweep in parse_overrides(args.overrides)]
    for config in configs:  # every setting checked before the corpus is read
        check_config(config, protocols=["pretrain"])
    check_writable(args.results, "--results")
    check_writable(cache_root(args.results), "the cache folder (SSL_BENCH_CACHE)")
    made = []
    for config in configs:
        made.append(pretrain_on_corpus(config, args.corpus, data_dir=args.data_dir, results_root=args.results,
                                       clip_seconds=args.clip_seconds, name=args.name, resume=args.resume,
                                       progress=not args.quiet, track=_track(args)))
    if _is_main_process():
        print()
        for meta in made:
            print(f"encoder {meta['init_id']}  {meta['name']}  loss {meta['loss']:.4f}"
                  f"{'  (reused)' if meta['reused'] else ''}  {meta['path']}")
        ids = ",".join(m["init_id"] for m in made)
        print(f"\nevaluate with: ssl-bench run -m {args.model} -t TASK --checkpoint {ids}"
              + (f" --results {args.results}" if args.results != "results" else ""))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_results

    everything, df = _filtered(args)
    roots = _roots(args)
    if df.empty:
        print(_nothing_matched(args, everything))
        return 0
    out = Path(args.out) if args.out else Path(roots[0]) / "plots"
    from .files import check_writable

    check_writable(out, "plot --out" if args.out else "the plots folder")
    kinds = [k.strip() for item in args.kind or [] for k in item.split(",") if k.strip()] or None
    written, notes = plot_results(df, roots, out, compare=args.compare, kinds=kinds)
    for path in written:
        print(path)
    for note in notes:
        print(note)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .launch.state import report

    report(args.root)
    return 0


COMMANDS = {"run": cmd_run, "results": cmd_results, "plugins": cmd_plugins, "pretrain": cmd_pretrain,
            "plot": cmd_plot, "status": cmd_status}


def _one_line_warnings(default: Any) -> Any:
    """``warnings.formatwarning`` for the command line: ssl-bench's own warnings (a skipped clip,
    a damaged cache entry, an unreadable run record) as one line each, others as Python shows them."""
    def format_warning(message, category, filename, lineno, line=None):
        if getattr(category, "__module__", "").startswith("ssl_bench"):
            return f"ssl-bench: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    return format_warning


def _exit_origin(exc: SystemExit) -> str:
    """``file:line`` of the Python code that called ``sys.exit`` (the innermost frame)."""
    tb = exc.__traceback__
    where = None
    while tb is not None:
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where or "unknown code"


def _written_path(args: Any) -> str:
    """The folder a command writes to, for messages about the disk: ``--results`` or the root."""
    return str(getattr(args, "results", None) or getattr(args, "root", None)
               or os.environ.get("SSL_BENCH_RESULTS") or "results")


def main(argv: list[str] | None = None) -> int:
    import errno
    import warnings

    from .errors import UserError
    from .provenance import set_command
    from .registry import set_registry

    set_command(argv)  # what run records report as the command line
    words = list(sys.argv[1:] if argv is None else argv)
    word = command_word(words)
    registry = _registry(words, listing=word is None or word in LISTING_COMMANDS or "-h" in words
                         or "--help" in words)
    previous = set_registry(registry)
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("SSL_BENCH_DEBUG"))
    default_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warnings(default_format)
    args = None
    try:
        parser = build_parser(registry, only=word or "")
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        command = getattr(args, "plugin_command", None)
        if command is not None:  # a plugin's command owns its exit status
            return command.run(args)
        from .files import verifying

        try:
            with verifying(bool(getattr(args, "verify", False))):
                return COMMANDS[args.command](args)
        except SystemExit as exc:  # plugin code (a task, a component) ended the process: never a success
            if debug:
                raise
            print(f"ssl-bench: error: plugin code called sys.exit({exc.code!r}) during `{args.command}` at "
                  f"{_exit_origin(exc)}; stopped, nothing half-written was kept", file=sys.stderr)
            return exc.code if isinstance(exc.code, int) and exc.code != 0 else 1
    except KeyboardInterrupt as exc:
        from .train import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):  # SIGTERM/SIGINT: it says what a rerun can resume from
            print(f"ssl-bench: {exc}", file=sys.stderr)
            return exc.exit_code
        print("ssl-bench: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except UserError as exc:  # one line; anything else is a bug and keeps its traceback
        if debug:
            raise
        print(f"ssl-bench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ssl-bench plugins | head`: the reader left; not an error of ours
        # stdout's buffer cannot be flushed any more: point it at devnull so exit does not fail again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # an in-process stdout with no file behind it
            pass
        return 0
    except OSError as exc:  # a full disk or a folder that cannot be written: one line, not a bug
        from .files import disk_full_message, is_disk_full, shown

        if debug:
            raise
        if is_disk_full(exc):
            print(f"ssl-bench: error: {disk_full_message(exc.filename or _written_path(args))}", file=sys.stderr)
            return 2
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and exc.filename:
            print(f"ssl-bench: error: {shown(exc.filename)}: {exc.strerror}; check its permissions, or choose "
                  "another folder (--results, SSL_BENCH_CACHE)", file=sys.stderr)
            return 2
        raise
    finally:
        warnings.formatwarning = default_format
        if "ssl_bench.distributed" in sys.modules:  # (a listing command never imports torch)
            sys.modules["ssl_bench.distributed"].shutdown()  # leave a torchrun process group cleanly
        set_registry(previous)  # main() called in-process (tests, notebooks): leave the registry as found


if __name__ == "__main__":
    raise SystemExit(main())
