"""One experiment: a model config on a task, split by split, protocol by protocol.

:func:`run_experiment` is what ``ssl-bench run`` calls.  It is the split loop and nothing else;
each of its steps has a room of its own:

* what the protocols are (their stage, whether they are frozen, their typed sections) comes
  from the registry; the runner knows none by name;
* where the encoder comes from (random, a checkpoint, a pretraining per split or on a corpus)
  and what it is called: :mod:`ssl_bench.encoders`;
* task -> features -> a split's train/valid/test (carving, statistics): :mod:`ssl_bench.splitdata`;
* compute columns and the columns every row carries: :mod:`ssl_bench.compute`.

For every split: the split's data; the model (random init, or the checkpoint); the protocols
of stage ``pretrain`` train the encoder unless a checkpoint replaces them (their own rows say
``init`` "pretraining from random" with the ``init_id`` of the encoder they made, which the
:class:`~ssl_bench.protocols.base.Pretrained` record they return names); then every other
requested protocol evaluates those weights, and a frozen-encoder protocol also runs on the
same encoder at its random initialisation (``init=random``), the baseline every SSL number is
read against.

Each split's rows, log lines and per-epoch records are kept as the split's *part* in the run's
state directory, ``<results>/.cache/runs/<run key>/<split>/part.json`` (the run key is its
identity by content, :func:`ssl_bench.provenance.run_key`).  When every split has its part, a
:class:`~ssl_bench.results.RunWriter` writes the run directory from them atomically
(``result.json`` with the run's provenance, :mod:`ssl_bench.provenance`; ``metrics.jsonl``;
``log.txt``) and the state directory goes.  ``part=[split]`` computes only that split: a
launcher's evaluation unit (:mod:`ssl_bench.launch`), so a run's splits can be computed by
different jobs, and the one that finds every part present writes the run; the numbers are
the same computation as in one process.  ``pretrain_only`` runs only the pretraining stage of
the part's splits: a launcher's encoder unit, which leaves the encoder in the cache.

An interrupted run (error, Ctrl-C, SIGTERM, SIGKILL) leaves nothing in the results directory;
its finished splits, finished protocols and training checkpoints stay in the state directory,
so ``ssl-bench results`` shows their rows (marked interrupted, :mod:`ssl_bench.results.partial`)
and running the same command again (``resume=True``) continues where it stopped.  Every writer
of a part holds its lock, so two jobs never compute one split at once.  Under ``torchrun``
every rank runs this function and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed as D
from .compute import Meter, RowStamp, compute_columns, count_parameters, cpu_seconds, flops_per_sample, spec_probe
from .config import DEFAULT_PROTOCOLS, ConfigError, config_hash
from .encoders import PRETRAINING_INIT, RANDOM, EncoderIdentity, EncoderSource, differs_from_random
from .errors import UserError
from .files import atomic_write_text, cache_root, file_lock, json_default
from .progress import RunClock
from .protocols.base import Protocol, ProtocolContext, ProtocolResult, section_config
from .protocols.data import SplitData, Unlabeled, normalize
from .provenance import ID_LENGTH, job_record, run_key
from .registry import get_registry
from .splitdata import PreparedSplit, TaskData, cap_batch_sizes, require_validation
from .train import STOP, TrainingInterrupted, configure_backends


def _slug(text: str) -> str:
    """``text`` as one file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


class _SavedRows:
    """Rows of the protocols a run has finished, kept in its state directory
    (``<results>/.cache/runs/<hash>/<split>/<protocol>-<init>.json``) until the run ends, so a
    rerun of an interrupted one reuses them instead of running them again."""

    def __init__(self, state_dir: Path, resume: bool, is_main: bool):
        self.dir, self.resume, self.is_main = state_dir, resume, is_main

    def kept(self) -> str | None:
        """What an interrupted run keeps for the rerun, in words (None: nothing)."""
        from .results.partial import PART

        done = sorted(self.dir.glob("*/*.json")) if self.dir.is_dir() else []
        splits = sum(1 for p in done if p.name == PART)
        protocols = sum(1 for p in done if p.name != PART and not (p.parent / PART).is_file())
        if not done:
            return None
        said = " and ".join(text for n, text in ((splits, f"{splits} finished split(s)"),
                                                  (protocols, f"{protocols} finished protocol run(s)")) if n)
        return (f"the rows of {said} are kept: `ssl-bench results` shows them (interrupted) and the same command "
                "reuses them")

    def get_or_run(self, split: str, key: str, compute: Callable[[], list[dict[str, Any]]],
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
        path = self.dir / split / f"{key}.json"
        # rank 0 decides, so ranks without a shared filesystem still take the same branch
        saved = D.broadcast_object(json.loads(path.read_text())["rows"] if self.resume and path.is_file() else None)
        if saved is not None:
            log(f"[{split}] {key}: finished before the interruption; rows reused")
            return saved
        rows = compute()
        if self.is_main:
            atomic_write_text(path, json.dumps({"rows": rows}, default=json_default))
        return rows


class _Recorder:
    """What computing one split says (log lines, per-epoch records, rows), kept for its part;
    lines are echoed when asked and appended to ``log_path`` as they come (a unit's log)."""

    def __init__(self, log_path: Path | None, echo: bool):
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.log_path, self.echo = log_path, echo

    def log(self, message: str) -> None:
        message = message.rstrip("\n")
        self.lines.append(message)
        if self.log_path is not None:
            with open(self.log_path, "a", errors="backslashreplace") as fh:
                fh.write(message + "\n")
        if self.echo:
            print(message, flush=True)

    def metrics(self, record: dict[str, Any]) -> None:
        self.records.append(json.loads(json.dumps(record, default=json_default)))

    def add_row(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        return row


class _NullRecorder(_Recorder):
    """What torchrun ranks other than 0 record: nothing."""

    def __init__(self) -> None:
        super().__init__(None, False)

    def log(self, message: str) -> None:
        pass

    def metrics(self, record: dict[str, Any]) -> None:
        pass


class _Parts:
    """The parts of one run (one per split) in its state directory, each written under its lock."""

    def __init__(self, state_dir: Path, is_main: bool):
        self.dir, self.is_main = state_dir, is_main

    def path(self, split: str) -> Path:
        return self.dir / _slug(split) / "part.json"

    def has(self, split: str) -> bool:
        # rank 0 decides, so ranks without a shared filesystem still take the same branch
        return bool(D.broadcast_object(self.path(split).is_file() if self.is_main else None))

    def lock(self, name: str) -> Any:
        return file_lock(self.dir / ".locks" / _slug(name)) if self.is_main else contextlib.nullcontext()

    def clear(self, split: str) -> None:
        if self.is_main:
            shutil.rmtree(self.dir / _slug(split), ignore_errors=True)

    def save(self, split: str, record: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_text(self.path(split), json.dumps(record, default=json_default))

    def load(self, split: str) -> dict[str, Any]:
        return json.loads(self.path(split).read_text())


class _Run:
    """The state of one :func:`run_experiment` call; :meth:`run` is the split loop."""

    def __init__(self, config: dict[str, Any], *, data_dir: str | Path | None, results_root: str | Path,
                 protocols: Sequence[str], checkpoint: str | Path | None, splits: Sequence[str] | None,
                 resume: bool, progress: bool, track: dict[str, Any] | None, label: str,
                 part: Sequence[str] | None = None, pretrain_only: bool = False,
                 columns: dict[str, Any] | None = None, key: str | None = None):
        self.registry = get_registry()
        known = self.registry.names("protocol")
        unknown = [p for p in protocols if p not in known]
        if unknown or not protocols:
            raise ConfigError(f"unknown protocol {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
        if not config.get("task"):
            raise ConfigError("run_experiment needs a config resolved with a task (config['task'])")
        self.given = copy.deepcopy(config)  # as given: what the run's identity is made of
        self.config = copy.deepcopy(config)
        self.protocols = tuple(protocols)
        self.part = list(part) if part is not None else None
        self.pretrain_only, self.columns, self.key = pretrain_only, dict(columns or {}), key
        self.checkpoint_given = bool(checkpoint)
        self.info = D.init(self.config.get("device"))
        self.results_root = Path(results_root)
        self.cache = cache_root(self.results_root)
        self.source = EncoderSource(self.config, self.registry, checkpoint, self.cache)
        self.data_dir, self.split_names = data_dir, list(splits) if splits else None
        self.resume, self.progress = resume, progress
        self.progress_main = progress and self.info.is_main
        self.track, self.label = dict(track or {}), label
        self.device = D.resolve_device(self.config.get("device"), self.info)
        self.seed = int(self.config.get("seed", 0))
        configure_backends(self.device, bool(self.config.get("deterministic")))

    # ------------------------------------------------------------------ protocols
    def protocol(self, name: str) -> Protocol:
        factory = self.registry.get("protocol", name).factory
        return factory(name) if isinstance(factory, type) else factory

    def section(self, name: str) -> Any:
        return section_config(self.protocol(name), self.config.get(name))

    def stage_protocols(self, stage: str) -> list[str]:
        """The requested protocols of ``stage`` that are enabled, in the order asked."""
        return [n for n in self.protocols
                if self.protocol(n).stage == stage and getattr(self.section(n), "enabled", True)]

    def check_shapes(self) -> None:
        """Every requested protocol serves the task's label shape (before any data work)."""
        shape = self.data.label_shape
        for name in self.protocols:
            shapes = tuple(self.protocol(name).shapes)
            if shape not in shapes:
                serving = [n for n in self.registry.names("protocol") if shape in self.protocol(n).shapes]
                raise ConfigError(f"protocol {name!r} serves {', '.join(shapes)} tasks; task {self.data.name!r} is "
                                  f"{shape} (protocols for {shape}: {', '.join(serving) or 'none registered'})")

    def trainers(self) -> list[tuple[str, str]]:
        """``(name, trains_on)`` of each requested protocol whose batch must fit the data."""
        out = []
        for name in self.protocols:
            proto = self.protocol(name)
            source = getattr(proto, "trains_on", None)
            section = self.config.get(name)
            if source not in ("unlabeled", "train") or not isinstance(section, dict):
                continue
            if not section.get("enabled", True) or "batch_size" not in section:
                continue
            if proto.stage == "pretrain" and (self.source.checkpoint is not None or section.get("corpus")):
                continue  # replaced by the checkpoint; a corpus is sized when it is read
            out.append((name, source))
        return out

    def choosers(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(name, fields)`` of each requested, enabled protocol that chooses on validation."""
        return [(name, tuple(self.protocol(name).chosen_on_validation)) for name in self.stage_protocols("evaluate")
                if getattr(self.protocol(name), "chosen_on_validation", ())]

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path | None:
        with STOP.installed():
            for name in self.protocols:  # each protocol's typed section: its settings checked before any data work
                self.section(name)
            self.data = TaskData(self.config, self.registry, self.data_dir, self.split_names)
            self.check_shapes()
            names = [s.name for s in self.data.splits]
            unknown = [n for n in self.part or () if n not in names]
            if unknown:
                raise ConfigError(f"part {', '.join(unknown)}: not among the run's splits ({', '.join(names)})")
            sha = self.source.identity["sha256"] if self.checkpoint_given and self.source.identity else None
            # a launcher passes the key it planned with, so every job of a launch agrees on it
            self.key = self.key or run_key(self.given, self.protocols, names, self.data.fingerprint(), sha,
                                           self.columns)
            self.state_dir = self.results_root / ".cache" / "runs" / self.key
            parts = _Parts(self.state_dir, self.info.is_main)
            todo = [s for s in self.data.splits if self.part is None or s.name in self.part]
            if not self.resume:
                if self.part is None and self.info.is_main:
                    shutil.rmtree(self.state_dir, ignore_errors=True)  # the whole run afresh
                for split in todo:
                    parts.clear(split.name)
                D.barrier()
            pending = [s for s in todo if not (self.resume and parts.has(s.name))]
            if self.progress_main:
                for split in todo:
                    if split not in pending:
                        print(f"[{split.name}] finished before the interruption; its rows are reused", flush=True)
            if pending:
                self.compute(pending, parts)
            if self.pretrain_only:
                return None
            return self.write_run(parts, names)

    def compute(self, splits: list[Any], parts: _Parts) -> None:
        """Compute ``splits``, each under its lock, and keep each one's part."""
        from .provenance import run_record
        from .results import new_run_id
        from .results.partial import Journal

        # before any feature is extracted
        require_validation(self.config, self.choosers(), self.data)
        notes = cap_batch_sizes(self.config, self.trainers(), self.data, self.info.world_size, self.info.is_main)
        self.data.size_frontend()
        self.data.load_features(self.cache, self.device, self.progress_main)
        provenance = {**run_record(self.device, registry=self.registry), "data": self.data.record(),
                      "run_key": self.key}
        if self.source.record() is not None:
            provenance["checkpoint"] = self.source.record()
        self.stamp = RowStamp(task=self.data.name, seed=self.seed,
                              primary_metric=self.data.metric_names[0] if self.data.metric_names else "",
                              code_version=provenance["code_version"],
                              data_sha256=self.data.digest["sha256"][:ID_LENGTH], job=job_record(),
                              columns=self.columns)
        self.saved = _SavedRows(self.state_dir, self.resume, self.info.is_main)
        header = [f"task {self.data.name}: {len(self.data.splits)} split(s), {len(self.data.classes)} classes, "
                  f"{len(self.data.features)} clips ({len(self.data.skipped)} skipped); device {self.device}, world "
                  f"size {self.info.world_size}; protocols {', '.join(self.protocols)}", *notes]
        if self.progress_main:
            print(header[0], flush=True)  # the notes were printed when they were found
        self.clock = RunClock(len(splits), lambda m: self.writer.log(m),
                              is_pretraining=lambda n: self.protocol(n).stage == "pretrain",
                              is_frozen=lambda n: self.protocol(n).frozen)
        journal = None
        if self.info.is_main and not self.pretrain_only:  # what `ssl-bench results` shows until the run ends
            journal = Journal(self.state_dir, default=json_default)
            journal.start(run_id=new_run_id(self.config, self.label), run_key=self.key,
                          config_hash=config_hash(self.config), config=self.config, provenance=provenance)
        try:
            self.compute_splits(splits, parts, header, provenance)
        except BaseException as exc:
            if journal is not None:
                journal.end(interrupted=isinstance(exc, KeyboardInterrupt))
            if isinstance(exc, TrainingInterrupted):
                exc.kept = self.saved.kept()
            raise

    def compute_splits(self, splits: list[Any], parts: _Parts, header: list[str], provenance: dict[str, Any]) -> None:
        """The split loop of :meth:`compute`."""
        for i, split in enumerate(splits):
            with parts.lock(split.name):
                if self.resume and parts.has(split.name):  # another job finished it while this one waited
                    continue
                log_path = None
                if self.info.is_main and not self.pretrain_only:
                    (self.state_dir / _slug(split.name)).mkdir(parents=True, exist_ok=True)
                    log_path = self.state_dir / _slug(split.name) / "log.txt"
                    log_path.write_text("\n".join(header) + "\n")
                self.writer = _Recorder(log_path, echo=self.progress_main) if self.info.is_main else _NullRecorder()
                self.clock.start_split(i)
                meter = Meter(self.device)
                pretraining = self.run_split(split)
                self.clock.end_split()
                if not self.pretrain_only:
                    parts.save(split.name, {
                        "split": split.name, "header": header, "log": self.writer.lines,
                        "metrics": self.writer.records, "rows": self.writer.rows, "config": self.config,
                        "provenance": provenance,
                        "compute": {"split": meter.read(self.info.world_size), "pretraining": pretraining}})
            D.barrier()

    def write_run(self, parts: _Parts, names: list[str]) -> Path | None:
        """The run directory from every split's part, once they are all there (under the run's
        lock, so that of two jobs finishing at once only one writes it); None until then."""
        from .results import RunWriter, new_run_id

        with parts.lock("run"):
            ready = all(parts.path(n).is_file() for n in names) if self.info.is_main else None
            final = None
            if D.broadcast_object(ready) and self.info.is_main:
                records = [parts.load(n) for n in names]
                first = records[0]
                provenance = {**first["provenance"], "parts": {
                    r["split"]: {"job": r["provenance"].get("job"), "host": r["provenance"].get("host"),
                                 "compute": r["compute"]} for r in records}}
                writer = RunWriter(self.results_root, new_run_id(first["config"], self.label), first["config"],
                                   echo=False, provenance=provenance, track=self.track, run_key=self.key)
                with writer:
                    for line in dict.fromkeys(line for r in records for line in r["header"]):
                        writer.log(line)
                    for r in records:
                        for line in r["log"]:
                            writer.log(line)
                        for record in r["metrics"]:
                            writer.metrics(record)
                        for row in r["rows"]:
                            writer.add_row(**row)
                    self.collect_predictions(writer.dir)  # every split's, from the state directory
                    wall = sum(r["compute"]["split"]["wall_s"] for r in records)
                    writer.log(f"done: {len(records)} split(s) in {wall:.1f} s")
                final = writer.final_dir
                shutil.rmtree(self.state_dir, ignore_errors=True)
            D.barrier()
            return final

    def prepare(self, split: Any) -> PreparedSplit:
        """The split's data; one encoder pretrained on a corpus for every split normalises with
        the corpus's statistics."""
        corpus = None
        if self.source.corpus_setting and self.source.checkpoint is None and self.stage_protocols("pretrain"):
            def corpus() -> Any:
                return self.source.corpus(self.data.task, self.extract)[1]
        return self.data.split_data(split, corpus=corpus, log=self.writer.log)

    def extract(self, clips: Sequence[Any]) -> Any:
        """Features of clips that are not the task's own (a corpus), at the task's clip length."""
        return self.data.extract(clips, self.cache, self.device, self.progress_main)

    def run_split(self, split: Any) -> dict[str, Any] | None:
        """Run the split's protocols; returns what its pretraining stage cost (None without one)."""
        t_split = time.time()
        prepared = self.prepare(split)
        data = prepared.data
        model, random_state, encoder = self.source.build(prepared.norm, self.seed, self.device, self.writer.log,
                                                         split.name)
        pretraining = self.stage_protocols("pretrain")
        meter = Meter(self.device)
        if self.source.checkpoint is not None:
            for name in pretraining:
                why = ("has no pretraining method" if getattr(model, "method", None) is None
                       else "is evaluated from --checkpoint")
                self.writer.log(f"[{split.name}] {name}: skipped, model {model.name!r} {why}")
        else:
            for name in pretraining:
                if getattr(model, "method", None) is None:  # a frozen import, or a model evaluated as built
                    self.writer.log(f"[{split.name}] {name}: skipped, model {model.name!r} has no pretraining "
                                    "method; its encoder is evaluated with the weights it was built with")
                    continue
                unlabeled = self.source.pretraining_input(split, self.data, self.progress_main, self.device)
                results, columns = self.run_protocol(name, model, RANDOM, data, unlabeled)
                made = next((r.pretrained for r in results if r.pretrained is not None), None)
                encoder = self.source.pretrained(made, self.data.digest["sha256"], self.device)
                # the pretraining's own rows (its loss) describe the encoder it made, from random init
                made_rows = EncoderIdentity(PRETRAINING_INIT, encoder.init_id, encoder.pretrained_by)
                for row in self.rows(prepared, name, made_rows, results, columns):
                    self.writer.add_row(**row)
        cost = meter.read(self.info.world_size) if pretraining else None
        if self.pretrain_only:
            self.writer.log(f"[{split.name}] pretraining stage done in {time.time() - t_split:.1f} s")
            return cost
        self.evaluate(split.name, prepared, model, random_state, encoder)
        self.writer.log(f"[{split.name}] done in {time.time() - t_split:.1f} s")
        return cost

    def evaluate(self, split: str, prepared: PreparedSplit, model: nn.Module, random_state: dict[str, torch.Tensor],
                 encoder: EncoderIdentity) -> None:
        """Every evaluation protocol on ``encoder``, and the frozen ones on its random init too."""
        differs: bool | None = None  # whether the evaluated encoder differs from its random init (decided once)
        for name in self.stage_protocols("evaluate"):
            def run(name: str = name, model: nn.Module = model, encoder: EncoderIdentity = encoder) -> list:
                return self.rows(prepared, name, encoder, *self.run_protocol(name, model, encoder, prepared.data))

            for row in self.saved.get_or_run(split, f"{name}-{_slug(encoder.init)}", run, self.writer.log):
                self.writer.add_row(**row)
            if not self.protocol(name).frozen or encoder.is_random:
                continue
            if differs is None:
                differs = differs_from_random(model, random_state)
            if not differs:
                self.writer.log(f"[{split}] {name}: no init=random baseline, encoder "
                                f"{type(model.encoder).__name__} is evaluated with the weights it was built with "
                                "(a frozen import, or a checkpoint equal to this seed's initialisation): a baseline "
                                "row would repeat the same numbers")
                continue

            def baseline(name: str = name) -> list[dict[str, Any]]:
                base = copy.deepcopy(model)
                base.load_state_dict(random_state, strict=False)
                return run(name, base, RANDOM)

            for row in self.saved.get_or_run(split, f"{name}-random", baseline, self.writer.log):
                self.writer.add_row(**row)

    def run_protocol(self, name: str, model: nn.Module, encoder: EncoderIdentity, data: SplitData,
                     unlabeled: Unlabeled | None = None) -> tuple[list[ProtocolResult], dict[str, Any]]:
        """Run protocol ``name`` on one split: its results, and the compute columns its rows
        carry unless it gives its own (a protocol that trains does)."""
        proto = self.protocol(name)
        self.clock.announce(data.name, name, encoder.init)
        t0, cpu0 = time.time(), cpu_seconds()
        ctx = ProtocolContext(
            name=name, model=model, init=encoder.init, data=data, config=self.config, section=self.section(name),
            device=self.device, cache_dir=self.cache,
            state_dir=self.state_dir / data.name / f"{name}-{_slug(encoder.init)}", resume=self.resume,
            progress=self.progress_main, log=self.writer.log, log_metrics=self.writer.metrics, unlabeled=unlabeled)
        try:
            results = proto.run(ctx)
        except UserError:
            raise
        except Exception as exc:  # a bug: keep the traceback, and say whose code raised it
            from .model import blame

            entry = self.registry.get("protocol", name)
            exc.add_note(blame(model, exc) or f"raised while running protocol {name!r} (plugin {entry.plugin!r})")
            raise
        wall = time.time() - t0
        self.clock.ran(name, encoder.init, wall)
        columns: dict[str, Any] = {}
        if results:
            model.eval()
            flops = flops_per_sample(lambda s: model.embed(normalize(model, s)),
                                     spec_probe(self.data.num_frames, self.data.num_bins, self.device))
            n = len(data.train) + len(data.valid) + len(data.test)
            columns = compute_columns(parameters=count_parameters(model.encoder), flops=flops, fit=None, wall_s=wall,
                                      device=self.device, world_size=self.info.world_size,
                                      samples_per_s=n / wall if wall > 0 else 0.0, cpu_s=cpu_seconds() - cpu0)
        return results, columns

    def rows(self, prepared: PreparedSplit, protocol: str, encoder: EncoderIdentity,
             results: list[ProtocolResult], columns: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per metric of every result, named by split and encoder."""
        rows = []
        for result in results:
            extra = {**columns, **result.extra}
            if result.predictions is not None:
                extra["predictions"] = self.write_predictions(prepared.data, protocol, encoder, result)
            rows += self.stamp.rows(split=prepared.data.name, split_columns=prepared.columns, protocol=protocol,
                                    init=encoder.init, init_id=encoder.init_id, pretrained_by=encoder.pretrained_by,
                                    metrics=result.metrics, extra=extra)
        return rows

    def write_predictions(self, data: SplitData, protocol: str, encoder: EncoderIdentity,
                          result: ProtocolResult) -> str:
        """Write a result's per-clip predictions and their reference in HEAR's layout (see
        :mod:`ssl_bench.predictions`) into the run's state directory, where they survive an
        interruption with the rows; returns the path the run directory will have them at."""
        from . import predictions as P

        name = "-".join(_slug(str(p)) for p in (protocol, encoder.init, result.extra.get("layer")) if p is not None)
        keys = [self.data.features.clips[int(i)].key for i in data.test]
        labels = [str(c) for c in self.data.classes]
        made = result.predictions
        if made.events is not None:
            predicted = P.event_layout(made.events, labels)
            reference = P.event_layout({k: self.data.features.clips[int(i)].events for k, i in zip(keys, data.test)},
                                       labels)
        else:
            predicted = P.scene_layout(keys, made.scores, labels)
            reference = P.scene_reference(keys, data.part_targets("test"), labels)
        if self.info.is_main:
            P.write(self.state_dir / data.name / "predictions", name, predicted, reference)
        return f"predictions/{data.name}/{name}.json"

    def collect_predictions(self, run_dir: Path | None) -> None:
        """Copy every split's predictions from the state directory into the run directory."""
        if run_dir is None:
            return
        for folder in sorted(self.state_dir.glob("*/predictions")):
            shutil.copytree(folder, run_dir / "predictions" / folder.parent.name, dirs_exist_ok=True)


def run_experiment(
    config: dict[str, Any],
    *,
    data_dir: str | Path | None = None,
    results_root: str | Path = "results",
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    checkpoint: str | Path | None = None,
    splits: Sequence[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    track: dict[str, Any] | None = None,
    label: str = "",
    part: Sequence[str] | None = None,
    pretrain_only: bool = False,
    columns: dict[str, Any] | None = None,
    run_key: str | None = None,
) -> Path | None:
    """Run ``protocols`` of a resolved ``config`` (with ``config["task"]`` set) on every split.

    Returns the run directory on rank 0 (``None`` on other torchrun ranks).  ``checkpoint``
    replaces pretraining with a checkpoint (an official or ssl-bench file, a Hugging Face
    directory, or the id of an encoder ``ssl-bench pretrain`` made); ``splits`` restricts the
    splits by name; ``resume`` continues an interrupted identical run (and an interrupted
    pretraining) instead of starting over; ``track`` also logs to experiment trackers
    (``{"mlflow": URI, "tensorboard": DIR}``, see :mod:`ssl_bench.tracking`); ``label`` goes into
    the run id (what a sweep varied).  ``part``: compute only these of the splits and keep their
    rows for the call that completes the run (which returns the run directory; the others
    return ``None``); ``pretrain_only``: only the pretraining stage of ``part`` (an encoder for the
    cache, no rows); ``columns``: extra columns every row carries, part of the run's identity (a
    suite's name and version); ``run_key``: the run's identity as a launcher planned it (default:
    computed here, :func:`ssl_bench.provenance.run_key`).  See the module docstring.
    """
    return _Run(config, data_dir=data_dir, results_root=results_root, protocols=protocols, checkpoint=checkpoint,
                splits=splits, resume=resume, progress=progress, track=track, label=label, part=part,
                pretrain_only=pretrain_only, columns=columns, key=run_key).run()
