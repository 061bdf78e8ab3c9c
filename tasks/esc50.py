"""ESC-50 (and its ESC-10 subset): 2000 five-second environmental recordings, 50 classes.

Layout, exactly as the public dataset ships it (``ESC-50-master/``)::

    audio/1-100032-A-0.wav ...           44.1 kHz mono, 5 s
    meta/esc50.csv                       filename,fold,target,category,esc10,src_file,take

Protocol: the 5 official folds, leave-one-fold-out (train on 4, test on 1); a validation set
is carved from the training folds only; accuracy, reported as mean and std over folds.
The ESC-50 layout reader here is shared with the ``synthetic`` task.
"""

from __future__ import annotations

from pathlib import Path

from ssl_bench import hookimpl
from ssl_bench.components import Clip, Split

from .common import (
    KALDI_FBANK_128,
    DataNotFoundError,
    DatasetTask,
    MetadataError,
    check_present,
    clip_key,
    data_home,
    fold_splits,
    parse_int,
    read_csv,
    resolve_inside,
)

#: The tagged v2.0.0 release archive (not the moving ``master`` branch).
ESC50_URL = "https://github.com/karolpiczak/ESC-50/releases/download/v2.0.0/ESC-50-master.zip"
#: Its SHA-256.  The release publishes none and none could be measured offline when this was
#: pinned: ``None`` until one is, so the first download records the digest it measured
#: (``.ssl-bench-download.json``, and every run's provenance) instead of trusting a guess.
ESC50_SHA256: str | None = None
ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
ESC50_META = "meta/esc50.csv"


def read_esc50_layout(root: Path, esc10_only: bool = False) -> tuple[list[str], list[tuple[Clip, int]]]:
    """Read ``root/meta/esc50.csv`` and return ``(classes, [(clip, fold), ...])``.

    Class ids are the CSV's ``target`` values renumbered in increasing order (the identity
    for the full ESC-50; 0..9 for ESC-10); a target must always carry the same category.
    Every problem raises :class:`MetadataError` naming the file and line.
    """
    meta = root / ESC50_META
    rows = []
    names: dict[int, tuple[str, int]] = {}
    seen: dict[str, int] = {}
    for line, row in read_csv(meta, ESC50_COLUMNS):
        fold = parse_int(row["fold"], meta, line, "fold", minimum=1)
        target = parse_int(row["target"], meta, line, "target", minimum=0)
        category = row["category"]
        if not category:
            raise MetadataError(f"{meta}:{line}: empty category")
        if target in names and names[target][0] != category:
            raise MetadataError(
                f"{meta}:{line}: target {target} is {category!r} here but {names[target][0]!r} on line {names[target][1]}"
            )
        names.setdefault(target, (category, line))
        esc10 = row["esc10"].lower()
        if esc10 not in ("true", "false"):
            raise MetadataError(f"{meta}:{line}: column 'esc10' must be True or False, got {row['esc10']!r}")
        filename = row["filename"]
        if filename in seen:
            raise MetadataError(f"{meta}:{line}: {filename} is listed twice (first on line {seen[filename]})")
        seen[filename] = line
        path = resolve_inside(root, f"audio/{filename}", meta, line)
        if esc10_only and esc10 != "true":
            continue
        rows.append((path, target, fold))
    if not rows:
        raise MetadataError(f"{meta}: no {'ESC-10 ' if esc10_only else ''}clips listed")
    targets = sorted({t for _, t, _ in rows})
    index = {t: i for i, t in enumerate(targets)}
    classes = [names[t][0] for t in targets]
    clips = [(Clip(path, (index[t],), clip_key(root, path)), fold) for path, t, fold in rows]
    return classes, clips


def find_esc50_root(directory: Path) -> Path | None:
    """``directory`` itself or its ``ESC-50-master`` (or other ``ESC-50*``) child, whichever
    holds meta/esc50.csv."""
    others = sorted(directory.glob("ESC-50*")) if directory.is_dir() else []
    for candidate in (directory, directory / "ESC-50-master", *others):
        if (candidate / ESC50_META).is_file():
            return candidate
    return None


class ESC50Task(DatasetTask):
    """ESC-50, 5-fold cross-validation on the official folds."""

    name = "esc50"
    sample_rate = 16000
    clip_seconds = 5.0
    metrics = ["accuracy"]
    #: AudioMAE's published log-mel statistics of ESC-50 (128-bin Kaldi fbank)
    norm_stats = {KALDI_FBANK_128: (-6.6268077, 5.358466)}
    split_protocol = "official 5 folds, leave-one-fold-out (train 4, test 1); validation carved from the training folds"
    esc10_only = False
    #: The published dataset's folds (400 clips each), for a run's plan before the data is here.
    nominal_splits = {f"fold{k}": (1600, 400) for k in range(1, 6)}
    #: ``data_dir`` is downloaded into when it is empty; the default location is under data_home()
    download_url = ESC50_URL
    download_sha256 = ESC50_SHA256

    def _locate(self) -> Path:
        base = self.data_dir if self.data_dir is not None else data_home() / "esc50"
        found = find_esc50_root(base)
        if found is not None:
            return found
        if base.exists() and base.is_dir() and any(base.iterdir()):
            raise DataNotFoundError(
                f"{base} does not look like ESC-50: neither {base / ESC50_META} nor "
                f"{base / 'ESC-50-master' / ESC50_META} exists; point --data-dir at the ESC-50-master folder"
            )
        from ssl_bench.download import fetch_dataset

        fetch_dataset(self.download_url, base, archive_name="ESC-50.zip", expect=f"ESC-50*/{ESC50_META}",
                      sha256=self.download_sha256)
        found = find_esc50_root(base)
        if found is None:  # pragma: no cover - fetch_dataset checked the pattern
            raise DataNotFoundError(f"{base}: the ESC-50 archive holds no {ESC50_META}")
        return found

    def _load(self, root: Path) -> None:
        classes, clips = read_esc50_layout(root, esc10_only=self.esc10_only)
        folds: dict[str, list] = {}
        for clip, fold in clips:
            folds.setdefault(f"fold{fold}", []).append(clip)
        check_present(self, folds)
        self._clip_folds = clips
        self._classes = classes

    def _splits(self) -> list[Split]:
        return fold_splits(self._clip_folds)


class ESC10Task(ESC50Task):
    """ESC-10: the 10-class subset of ESC-50 marked in its ``esc10`` column, same folds."""

    name = "esc10"
    esc10_only = True
    nominal_splits = {f"fold{k}": (320, 80) for k in range(1, 6)}
    split_protocol = "ESC-10 subset, official 5 folds, leave-one-fold-out; validation carved from the training folds"


@hookimpl
def register_tasks(register):
    """ESC-50 and its ESC-10 subset."""
    register("esc50", ESC50Task)
    register("esc10", ESC10Task)
