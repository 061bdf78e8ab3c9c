"""Fine-tuning's choices on validation (grid of learning rates and augmentation strengths, the
probe-initialised head), its diagnostics, the presets' fine-tuning recipes and the ESC-50-layout
fixture script.  Toy models and data (tests/trainfixtures.py): each fine-tuning takes a second."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from trainfixtures import toy_config, toy_model, toy_split

import ssl_bench.protocols.finetune as ft
from ssl_bench.config import ConfigError, resolve
from ssl_bench.model import create_model

GRID = {"epochs": 2, "lr_factors": [0.3, 3.0], "aug_factors": [0.0, 1.0], "mixup": 0.5, "specaug_time": 2}


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def with_test_labels(split, seed: int):
    """The same split with the test part's labels replaced by random ones."""
    other = copy.copy(split)
    other.targets = split.targets.copy()
    other.targets[split.test] = np.random.default_rng(seed).integers(0, split.num_classes, len(split.test))
    return other


# --------------------------------------------------------------------------- selection
def test_changing_test_labels_cannot_change_any_choice(tmp_path):
    split = toy_split(seed=3)
    cfg = toy_config(finetune={**GRID, "head_init": "probe"})
    runs = []
    for seed in (None, 1):
        data = split if seed is None else with_test_labels(split, seed)
        model = toy_model()
        res = ft.finetune(model, data, cfg, device="cpu", checkpoint_dir=tmp_path / str(seed), progress=False)
        runs.append((res, weights(model)))
    (first, w0), *others = runs
    assert first.columns()["grid_size"] == 4 and first.selection == "valid"
    for res, w in others:
        assert res.columns() == first.columns()  # lr, aug, head C, best epoch, validation scores, losses
        assert res.trials == first.trials
        assert all(torch.equal(w[k], w0[k]) for k in w0)  # the same model is scored on test


def test_test_part_is_scored_once_after_every_choice(monkeypatch):
    split = toy_split()
    calls, parts = [], []
    valid_values = iter([0.5, 0.6, 0.9, 0.7, 0.8, 0.85])  # grid point 2, epoch 1 is the best

    def fake_score(m, data, part, **kw):
        parts.append(part)
        calls.append(weights(m))
        return {"accuracy": next(valid_values) if part == "valid" else 0.25}

    monkeypatch.setattr(ft, "score", fake_score)
    model = toy_model()
    res = ft.finetune(model, split, toy_config(finetune={"epochs": 2, "lr_factors": [0.5, 1.0, 2.0]}), device="cpu",
                      progress=False)
    assert parts == ["valid"] * 6 + ["test"]
    assert (res.best_epoch, res.valid, res.test) == (2 - 1, {"accuracy": 0.9}, {"accuracy": 0.25})
    base_lr = ft.train_config(toy_config()).peak_lr
    assert res.lr == pytest.approx(base_lr) and [t["lr_factor"] for t in res.trials] == [0.5, 1.0, 2.0]
    assert [t["best_valid"] for t in res.trials] == [0.6, 0.9, 0.85]
    assert all(torch.equal(calls[2][k], calls[-1][k]) for k in calls[-1])  # scored: point 2 after epoch 1
    assert json.loads(res.columns()["valid_by_grid"]) == {
        f"lr{f * base_lr:.3g}-aug1": v for f, v in zip((0.5, 1.0, 2.0), (0.6, 0.9, 0.85))}


def test_equal_accuracy_is_decided_by_the_validation_loss(monkeypatch):
    split = toy_split()
    values = iter([{"accuracy": 0.5, "loss": 2.0}, {"accuracy": 0.5, "loss": 1.0},
                   {"accuracy": 0.5, "loss": 0.7}, {"accuracy": 0.5, "loss": 0.9}])
    monkeypatch.setattr(ft, "score", lambda m, d, part, **kw: dict(next(values)) if part == "valid" else {"accuracy": 0})
    res = ft.finetune(toy_model(), split, toy_config(finetune={"epochs": 2, "lr_factors": [1.0, 2.0]}), device="cpu",
                      progress=False)
    assert [t["best_epoch"] for t in res.trials] == [2, 1]
    assert res.lr == pytest.approx(2 * ft.train_config(toy_config()).peak_lr) and res.valid["loss"] == 0.7


def test_grid_run_resumes_to_the_same_choice_and_keeps_only_its_weights(tmp_path):
    split = toy_split()
    cfg = toy_config(finetune={"epochs": 2, "lr_factors": [0.3, 3.0]})
    first = ft.finetune(toy_model(), split, cfg, device="cpu", checkpoint_dir=tmp_path, progress=False)
    chosen = tmp_path / ft._trial_name({"lr": first.lr, "aug": first.aug})
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("best-e*.pt")] == \
        [chosen.relative_to(tmp_path) / f"best-e{first.best_epoch}.pt"]
    again = ft.finetune(toy_model(), split, cfg, device="cpu", checkpoint_dir=tmp_path, progress=False)
    assert again.columns() == first.columns() and again.test == first.test


def test_a_diverging_grid_point_is_left_out_not_fatal(monkeypatch):
    real_fit = ft.fit
    base_lr = ft.train_config(toy_config()).peak_lr

    def fit(model, dataset, loss_fn, cfg, **kwargs):
        if cfg.peak_lr > 2 * base_lr:  # the high lr "diverges" before its first validation epoch
            raise FloatingPointError("finetune: loss became nan by epoch 1 step 3")
        return real_fit(model, dataset, loss_fn, cfg, **kwargs)

    monkeypatch.setattr(ft, "fit", fit)
    split = toy_split()
    res = ft.finetune(toy_model(), split, toy_config(finetune={"epochs": 2, "lr_factors": [1.0, 9.0]}), device="cpu",
                      progress=False)
    assert res.lr == pytest.approx(base_lr) and np.isnan(res.trials[1]["best_valid"]) and res.selection == "valid"
    with pytest.raises(FloatingPointError, match="every grid point"):
        ft.finetune(toy_model(), split, toy_config(finetune={"epochs": 2, "lr_factors": [3.0, 9.0]}), device="cpu",
                    progress=False)
    with pytest.raises(FloatingPointError, match="nan"):  # a lone setting has nothing to fall back on
        ft.finetune(toy_model(), split, toy_config(finetune={"epochs": 2, "lr_factors": [9.0]}), device="cpu",
                    progress=False)


def test_a_grid_point_that_diverges_late_keeps_its_scored_epochs(monkeypatch):
    real_fit = ft.fit
    base_lr = ft.train_config(toy_config()).peak_lr

    def fit(model, dataset, loss_fn, cfg, **kwargs):
        out = real_fit(model, dataset, loss_fn, cfg, **kwargs)
        if cfg.peak_lr > 2 * base_lr:  # scored its epochs, then "diverged"
            raise FloatingPointError("finetune: loss became inf")
        return out

    monkeypatch.setattr(ft, "fit", fit)
    res = ft.finetune(toy_model(), toy_split(), toy_config(finetune={"epochs": 2, "lr_factors": [0.01, 9.0]}),
                      device="cpu", progress=False)
    late = res.trials[1]
    assert late["best_epoch"] >= 1 and np.isfinite(late["best_valid"]) and np.isnan(late["final_loss"])
    assert json.loads(res.columns()["valid_by_grid"])[ft._trial_name(late)] == late["best_valid"]


def test_a_grid_needs_validation_data_and_sane_values():
    no_valid = toy_split(n_valid=0)
    with pytest.raises(ConfigError, match="valid_fraction"):
        ft.finetune(toy_model(), no_valid, toy_config(finetune={"lr_factors": [1.0, 2.0]}), device="cpu",
                    progress=False)
    res = ft.finetune(toy_model(), no_valid, toy_config(finetune={"epochs": 2}), device="cpu", progress=False)
    assert res.selection == "last" and res.best_epoch == 2
    for key, value in (("lr_factors", [0.0]), ("lr_factors", []), ("lr_factors", ["fast"]), ("aug_factors", [-1]),
                       ("lr_factors", [1, 1]), ("head_init", "zeros")):
        with pytest.raises(ConfigError, match=f"finetune.{key}"):
            ft.finetune(toy_model(), toy_split(), toy_config(finetune={key: value}), device="cpu", progress=False)


# --------------------------------------------------------------------------- recipe pieces
def test_probe_head_starts_at_the_linear_probe_of_the_frozen_encoder():
    split = toy_split(seed=5)
    model = ft.prepare_model(toy_model(), split.num_classes, 0.0)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    info = ft.probe_head(model, split, device="cpu", batch_size=8)
    assert info["head_C"] in ft.PROBE_C
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())  # encoder untouched
    # the folded standardisation: the model's own validation score is the probe's
    assert ft.score(model, split, "valid", batch_size=8, device="cpu")["accuracy"] == info["head_valid"] > 0.5
    random_head = ft.prepare_model(toy_model(), split.num_classes, 0.0)
    assert random_head.head[1].weight.abs().max() < 1e-3  # the release's init: trunc-normal, std 2e-5


def test_fine_tuning_keeps_the_fixed_position_table_fixed_and_is_reproducible_on_threads():
    """As the official fine-tuning: AudioMAE's sin-cos table is loaded, not trained.  Training
    it made token-dropping fine-tuning differ from run to run on a multi-core CPU (atomic adds
    in the backward of the kept rows' lookup); two steps from one state now agree bit for bit."""
    model = create_model("audiomae", preset="tiny", **{"encoder.depth": 1, "frontend.num_frames": 64})
    model = ft.prepare_model(model, 5, 0.0)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.pos_embed" not in trained and "encoder.cls_token" in trained
    assert trained == {n for n in trained if n.startswith(ft.TRAINED)} and "head.1.weight" in trained
    x, y = torch.randn(32, 64, 128, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 5
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(3):
            torch.manual_seed(1)  # the same tokens dropped each time
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model.classify(x, drop_tokens=True), y).backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for other in grads[1:] for a, b in zip(grads[0], other))


def test_augmentation_strength_scales_mixup_specaugment_and_token_dropping():
    section = {"mixup": 0.5, "specaug_freq": 24, "specaug_time": 96, "label_smoothing": 0.1}
    assert ft.augmented(section, 0.5) == {**section, "mixup": 0.25, "specaug_freq": 12, "specaug_time": 48}
    assert ft.augmented(section, 0.0) == {**section, "mixup": 0.0, "specaug_freq": 0, "specaug_time": 0}
    assert ft.augmented(section, 3.0)["mixup"] == 1.0 and ft.augmented(section, 1.0) == section
    cfg = resolve("audiomae", preset="tiny", overrides={"encoder.depth": 1})
    model = create_model("audiomae", preset="tiny", **{"encoder.depth": 1})
    masker, ft_section = model.finetune_masker, cfg["finetune"]
    assert ft.scaled_masker(masker, ft_section, 1.0) is masker
    assert ft.scaled_masker(masker, ft_section, 0.0) is None
    half = ft.scaled_masker(masker, ft_section, 0.5, build=model.build)
    assert (half.cfg.time_ratio, half.cfg.freq_ratio) == pytest.approx((masker.cfg.time_ratio / 2,
                                                                         masker.cfg.freq_ratio / 2))
    assert ft.scaled_masker(masker, ft_section, 100.0).cfg.time_ratio == ft.MAX_DROP_RATIO


class CountingMasker(torch.nn.Module):
    """Drops one token in four and counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, batch_size, grid, layout, device="cpu", generator=None):
        self.calls += 1
        mask = torch.zeros(batch_size, grid[0] * grid[1], dtype=torch.bool)
        mask[:, ::4] = True
        return mask


def test_every_grid_point_gets_its_own_token_dropping(monkeypatch):
    model = toy_model()
    masker = model.finetune_masker = CountingMasker()
    calls = []
    real_fit = ft.fit

    def fit(m, *args, **kwargs):
        before = masker.calls
        out = real_fit(m, *args, **kwargs)
        calls.append((m.finetune_masker is masker, masker.calls - before))
        return out

    monkeypatch.setattr(ft, "fit", fit)
    ft.finetune(model, toy_split(), toy_config(finetune={"epochs": 1, "aug_factors": [0.0, 1.0]}),
                device="cpu", progress=False)
    assert [used for used, _ in calls] == [False, True]  # strength 0: no dropping, then 1: the model's
    assert calls[0][1] == 0 and calls[1][1] > 0
    assert model.finetune_masker is masker  # handed back as it came


def test_columns_record_the_diagnostics():
    res = ft.finetune(toy_model(), toy_split(), toy_config(finetune={"epochs": 3}), device="cpu", progress=False)
    cols = res.columns()
    assert cols["final_train_loss"] == pytest.approx(res.fit.history[-1]["loss"])
    assert cols["best_epoch"] == res.best_epoch == next(r["best_epoch"] for r in reversed(res.history))
    assert cols["best_valid"] == res.valid["accuracy"] == cols["valid_accuracy"]
    assert cols["lr"] == pytest.approx(ft.train_config(toy_config()).peak_lr)
    assert (cols["aug"], cols["grid_size"], cols["head_init"], cols["head_C"], cols["selection"]) == \
        (1.0, 1, "random", None, "valid")
    assert "valid_loss" in cols


# --------------------------------------------------------------------------- presets
def test_base_presets_keep_the_papers_fine_tuning_recipes():
    """The code-verified recipes of the facts file (audiomae-ast-facts.md, sections 1.10 and 2.5)."""
    keys = ("epochs", "warmup_epochs", "batch_size", "blr", "layer_decay", "drop_path", "weight_decay",
            "min_lr", "betas", "mixup", "mixup_alpha", "specaug_freq", "specaug_time")
    as20k = (60, 4, 32, 1e-3, 0.75, 0.1, 5e-4, 1e-6, [0.9, 0.999], 0.5, 10.0, 48, 192)
    as2m = (100, 10, 256, 2e-4, 0.75, 0.1, 5e-4, 1e-6, [0.9, 0.999], 0.5, 10.0, 48, 192)
    for task, want in (("audioset", as20k), ("audioset-20k", as20k), ("audioset-2m", as2m)):
        for preset in ("base", "base-mask0.3", "large"):
            f = resolve("audiomae", preset=preset, task=task)["finetune"]
            assert tuple(f[k] for k in keys) == want, (preset, task)
            assert (f["lr"], f["lr_factors"], f["aug_factors"], f["head_init"]) == (None, None, None, "random")
        masker = resolve("audiomae", preset="base", task=task)["finetune"]["masker"]
        assert (masker["time_ratio"], masker["freq_ratio"]) == (0.2, 0.2)
    keys = ("lr", "epochs", "batch_size", "specaug_freq", "specaug_time", "mixup", "betas", "weight_decay",
            "layer_decay", "drop_path")
    ast = {"esc50": (1e-5, 25, 48, 24, 96, 0.0, [0.95, 0.999], 5e-7, 1.0, 0.0),
           "speechcommands": (2.5e-4, 30, 128, 48, 48, 0.6, [0.95, 0.999], 5e-7, 1.0, 0.0),
           "audioset": (5e-5, 25, 12, 48, 192, 0.5, [0.95, 0.999], 5e-7, 1.0, 0.0)}
    for task, want in ast.items():
        f = resolve("ast", preset="base", task=task)["finetune"]
        assert tuple(f[k] for k in keys) == want, task
        assert (f["lr_factors"], f["aug_factors"], f["head_init"]) == (None, None, "random")


@pytest.mark.parametrize("model", ["audiomae", "ast"])
def test_presets_below_base_follow_the_stated_rule(model):
    for preset in ("tiny", "small"):
        cfg = resolve(model, preset=preset)
        rule = ft.scaled_recipe(cfg["encoder"]["dim"])
        assert {k: cfg[k.split(".")[0]][k.split(".", 1)[1]] for k in rule} == rule, preset
        assert cfg["events_finetune"]["blr"] == cfg["finetune"]["blr"]  # events fine-tuning: the same rule
        for task in ("esc50", "audioset"):  # the rule wins over the (ViT-B) task recipes
            f = resolve(model, preset=preset, task=task)["finetune"]
            assert f["lr"] is None and f["blr"] == rule["finetune.blr"] and f["head_init"] == "probe"
    tiny = resolve(model, preset="tiny")["finetune"]
    assert tiny["blr"] == pytest.approx(1e-3 * 768 / 64)  # lr 7.5e-4 at batch 16
    assert ft.train_config({"finetune": tiny}).peak_lr == pytest.approx(1e-3 * 768 / 64 * tiny["batch_size"] / 256)


def test_scaled_recipe_reproduces_the_reference_at_its_width():
    assert ft.scaled_recipe(768)["finetune.blr"] == ft.REFERENCE_BLR
    assert ft.scaled_recipe(384)["finetune.blr"] == 2 * ft.REFERENCE_BLR
    with pytest.raises(ValueError, match="width"):
        ft.scaled_recipe(0)


# --------------------------------------------------------------------------- the fixture script
def load_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_esc50_fixture.py"
    spec = importlib.util.spec_from_file_location("make_esc50_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixture_script_writes_the_esc50_layout(tmp_path):
    script = load_script()
    root = script.write_fixture(tmp_path / "fx", per_class=5, unlabeled=2, seconds=0.5, classes=3)
    from ssl_bench.tasks.esc50 import ESC50Task

    task = ESC50Task(data_dir=root)
    task.prepare()
    splits = list(task.splits())
    assert [s.name for s in splits] == [f"fold{i}" for i in range(1, 6)]
    assert task.classes == script.CLASSES[:3] and all(len(s.test) == 3 for s in splits)
    audio = sorted((root / "audio").glob("*.wav"))
    assert len(audio) == 15 and audio[0].name.split("-")[0] in "12345"
    wave, sr = sf.read(audio[0])
    assert sr == 44100 and wave.ndim == 1 and len(wave) == 22050 and 0 < np.abs(wave).max() <= 0.9
    assert len(list((tmp_path / "fx" / "unlabeled").glob("*.wav"))) == 2
    again = script.make_clip(1, 0, seconds=0.5)
    assert np.allclose(again, sf.read(root / "audio" / "1-101000-A-1.wav")[0], atol=1 / 32767)
    # each class is its own sound: the clips of one class are closer to each other than to the others
    spectra = {t: [np.abs(np.fft.rfft(script.make_clip(t, i, seconds=0.5)))[:4000] for i in range(4)] for t in range(3)}

    def dist(a, b):
        return float(np.linalg.norm(np.log1p(a) - np.log1p(b)))

    within = np.mean([dist(s[0], s[j]) for s in spectra.values() for j in (1, 2, 3)])
    between = np.mean([dist(spectra[a][0], spectra[b][j]) for a in range(3) for b in range(3) if a != b
                       for j in (1, 2, 3)])
    assert within < between
