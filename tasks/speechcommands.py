"""Speech Commands v0.02: 35 spoken words, one-second clips, the official split.

Layout, as the archive unpacks::

    <word>/<speaker>_nohash_<n>.wav      16 kHz mono, up to 1 s
    validation_list.txt                  relative paths of the validation clips
    testing_list.txt                     relative paths of the test clips
    _background_noise_/                  long noise recordings: not a class, not used

Protocol (as AST and AudioMAE fine-tune SPC-2): train = every clip not listed in either
file, validation = ``validation_list.txt``, test = ``testing_list.txt``; accuracy.
"""

from __future__ import annotations

from pathlib import Path

from ssl_bench import hookimpl
from ssl_bench.components import Clip, Split

from .common import KALDI_FBANK_128, DataNotFoundError, DatasetTask, MetadataError, data_home, resolve_inside

URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
#: The archive's published SHA-256 (the same digest torchaudio's SPEECHCOMMANDS checks).
SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
LISTS = ("validation_list.txt", "testing_list.txt")
AUDIO_EXTENSIONS = (".wav", ".flac")


def find_speechcommands_root(directory: Path) -> Path | None:
    """``directory`` or its ``speech_commands_v0.02`` child, whichever holds the list files."""
    for candidate in (directory, directory / "speech_commands_v0.02"):
        if all((candidate / name).is_file() for name in LISTS):
            return candidate
    return None


def _read_list(root: Path, name: str, classes: set[str]) -> list[tuple[str, int]]:
    path = root / name
    out = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        rel = text.strip()
        if not rel:
            continue
        resolve_inside(root, rel, path, line)
        word = rel.split("/", 1)[0]
        if "/" not in rel or word not in classes:
            raise MetadataError(
                f"{path}:{line}: {rel!r} is not <word>/<file> with a known word "
                f"(words: {', '.join(sorted(classes)[:8])}{', ...' if len(classes) > 8 else ''})"
            )
        out.append((rel, line))
    return out


class SpeechCommandsTask(DatasetTask):
    """Speech Commands v0.02, 35-word classification on the official split."""

    name = "speechcommands"
    sample_rate = 16000
    clip_seconds = 1.0
    metrics = ["accuracy"]
    #: AudioMAE's published log-mel statistics of Speech Commands (128-bin Kaldi fbank)
    norm_stats = {KALDI_FBANK_128: (-6.845978, 5.5654526)}
    split_protocol = "official v0.02 split: validation_list.txt / testing_list.txt, train = the rest"
    #: The published v0.02 split (35 words), for a run's plan before the data is here.
    nominal_splits = {"official": (84843, 9981, 11005)}
    download_url = URL
    download_sha256 = SHA256

    def _locate(self) -> Path:
        base = self.data_dir if self.data_dir is not None else data_home() / "speechcommands"
        found = find_speechcommands_root(base)
        if found is not None:
            return found
        if base.is_dir() and any(base.iterdir()):
            raise DataNotFoundError(
                f"{base} does not look like Speech Commands v0.02: {base / LISTS[0]} and {base / LISTS[1]} "
                "are missing; point --data-dir at the unpacked speech_commands_v0.02 folder"
            )
        from ssl_bench.download import fetch_dataset

        fetch_dataset(self.download_url, base, archive_name="speech_commands_v0.02.tar.gz", expect=LISTS[0],
                      sha256=self.download_sha256)
        return base

    def _load(self, root: Path) -> None:
        words = sorted(
            p.name for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(("_", "."))
            and any(f.suffix.lower() in AUDIO_EXTENSIONS for f in p.iterdir())
        )
        if not words:
            raise MetadataError(f"{root}: no <word>/ folders with audio found")
        index = {w: i for i, w in enumerate(words)}
        listed = {}
        for name in LISTS:
            for rel, line in _read_list(root, name, set(words)):
                if rel in listed:
                    other, other_line = listed[rel]
                    raise MetadataError(f"{root / name}:{line}: {rel} is also listed in {other}:{other_line}")
                listed[rel] = (name, line)
        parts: dict[str, list[Clip]] = {"train": [], "valid": [], "test": []}
        for word in words:
            for f in sorted((root / word).iterdir()):
                if f.suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                rel = f"{word}/{f.name}"
                where = listed.pop(rel, (None, None))[0]
                part = {"validation_list.txt": "valid", "testing_list.txt": "test"}.get(where, "train")
                parts[part].append(Clip(f, (index[word],), rel))
        # Listed clips without audio are kept (and counted as skipped when features are made).
        self.missing = {"valid": [], "test": []}
        for rel, (name, _) in sorted(listed.items()):
            part = "valid" if name == LISTS[0] else "test"
            self.missing[part].append(rel)
            parts[part].append(Clip(root / rel, (index[rel.split("/", 1)[0]],), rel))
        if self.missing["valid"] or self.missing["test"]:
            from .common import report_missing

            report_missing(self.name, self.missing, {k: len(v) for k, v in parts.items()})
        if not parts["train"] or not parts["test"]:
            raise MetadataError(f"{root}: the official split leaves no training or no test clips")
        self._parts = parts
        self._classes = words

    def _splits(self) -> list[Split]:
        p = self._parts
        return [Split(name="official", train=list(p["train"]), test=list(p["test"]), valid=list(p["valid"]) or None)]


@hookimpl
def register_tasks(register):
    """Speech Commands v0.02 (35 words)."""
    register("speechcommands", SpeechCommandsTask)
