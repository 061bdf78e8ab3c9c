"""The training loop, augmentation and the three protocols, on tiny models (seconds)."""

from __future__ import annotations

import copy
import dataclasses
import signal

import numpy as np
import pytest
import torch
from torch import nn

from ssl_bench import augment
from ssl_bench.protocols import finetune as ft
from ssl_bench.protocols.data import SpecDataset, fit_frames, label_targets
from ssl_bench.encoders import pretrain, pretrain_loss
from ssl_bench.protocols.embeddings import embedding_key, extract_embeddings, weights_hash
from ssl_bench.protocols.linear import fit_linear, linear_probe
from ssl_bench.train import (
    FitHooks, Sampling, ShardedBatchSampler, StepContext, TrainConfig, TrainConfigError, WarmupCosine, fit, param_groups,
    predict,
)
from trainfixtures import T, Regression, mse, toy_config, toy_features, toy_model, toy_split


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- schedule
def test_warmup_then_half_cycle_cosine():
    opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "lr_scale": 0.5}], lr=1.0)
    s = WarmupCosine(opt, peak_lr=1e-3, min_lr=1e-5, warmup_epochs=2, epochs=10, steps_per_epoch=4)
    assert s.lr_at(0) == 0.0
    assert s.lr_at(4) == pytest.approx(0.5e-3)  # halfway through warm-up (epoch 1 of 2)
    assert s.lr_at(8) == pytest.approx(1e-3)  # warm-up ends at the peak
    assert s.lr_at(24) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # cosine midpoint (epoch 6 of 2..10)
    assert s.lr_at(40) == pytest.approx(1e-5)  # the end: min_lr
    s.step_num = 8
    assert s.apply() == pytest.approx(1e-3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # group lr carries its lr_scale
    values = [s.lr_at(i) for i in range(8, 41)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone after warm-up


def test_peak_lr_scales_with_batch():
    assert TrainConfig(blr=1e-3, batch_size=512).peak_lr == pytest.approx(2e-3)
    assert TrainConfig(blr=1e-3, batch_size=512, lr=5e-4).peak_lr == 5e-4


# --------------------------------------------------------------------------- parameter groups
def test_layer_decay_groups_and_no_weight_decay():
    model = toy_model(depth=2)
    model.set_head(3)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["param_names"]}
    # scale = decay ** (depth + 1 - layer)
    assert by_name["encoder.patch_embed.weight"]["lr_scale"] == pytest.approx(0.5 ** 3)
    assert by_name["encoder.blocks.0.1.weight"]["lr_scale"] == pytest.approx(0.5 ** 2)
    assert by_name["encoder.blocks.1.1.weight"]["lr_scale"] == pytest.approx(0.5 ** 1)
    assert by_name["encoder.norm.weight"]["lr_scale"] == pytest.approx(1.0)
    assert by_name["head.1.weight"]["lr_scale"] == pytest.approx(1.0)
    # no decay for biases, 1-D (norm) parameters and position/class tokens; decay for matrices
    for name in ("encoder.patch_embed.bias", "encoder.norm.weight", "encoder.cls_token", "encoder.pos_embed",
                 "head.0.weight", "head.1.bias"):
        assert by_name[name]["weight_decay"] == 0.0, name
    for name in ("encoder.patch_embed.weight", "encoder.blocks.1.1.weight", "head.1.weight", "decoder.pred.weight"):
        assert by_name[name]["weight_decay"] == 0.05, name
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    # without layer decay every group has scale 1
    assert {g["lr_scale"] for g in param_groups(model, 0.05)} == {1.0}


def test_frozen_parameters_are_left_out():
    model = toy_model()
    for p in model.decoder.parameters():
        p.requires_grad_(False)
    names = {n for g in param_groups(model, 0.05) for n in g["param_names"]}
    assert not any(n.startswith("decoder.") for n in names)


# --------------------------------------------------------------------------- sampler
def test_sampler_covers_each_global_batch_once_for_any_split():
    one = ShardedBatchSampler(37, batch_size=8, accum_steps=1, seed=3)
    one.set_epoch(2)
    ref = list(one)
    assert len(ref) == 37 // 8 and all(len(b) == 8 for b in ref)
    # 2 ranks x 2 accumulation steps: the union of the micro-batches of a step is that step's batch
    parts = []
    for rank in range(2):
        s = ShardedBatchSampler(37, batch_size=8, accum_steps=2, rank=rank, world_size=2, seed=3)
        s.set_epoch(2)
        parts.append(list(s))
    for step in range(len(ref)):
        got = sorted(i for rank in range(2) for m in range(2) for i in parts[rank][step * 2 + m])
        assert got == sorted(ref[step])
    # resuming at step 2 yields exactly the rest of the epoch
    s = ShardedBatchSampler(37, batch_size=8, seed=3)
    s.set_epoch(2, start_step=2)
    assert list(s) == ref[2:]
    with pytest.raises(TrainConfigError, match="not divisible"):
        ShardedBatchSampler(37, batch_size=6, accum_steps=4)


def test_weighted_sampler_draws_class_balanced_epochs():
    w = [0.0] * 10 + [1.0] * 10 + [9.0] * 2  # two rare clips with big weights, ten that never appear
    s = ShardedBatchSampler(22, batch_size=10, seed=0, weights=w, num_samples=1000)
    assert s.steps_per_epoch == 100
    s.set_epoch(0)
    drawn = torch.tensor([i for b in s for i in b])
    assert len(drawn) == 1000 and not (drawn < 10).any()
    share_rare = (drawn >= 20).float().mean().item()
    assert 0.55 < share_rare < 0.75  # expected 18 / 28 = 0.64
    s.set_epoch(1)
    assert not torch.equal(drawn, torch.tensor([i for b in s for i in b]))  # a new draw every epoch
    with pytest.raises(TrainConfigError, match="sampling weights"):
        ShardedBatchSampler(3, batch_size=1, weights=[0.0, 0.0, 0.0])


def test_random_crop_only_when_training():
    feats = toy_features(4)
    long = type(feats)([torch.arange(20.0)[:, None].repeat(1, 4)], [0])
    train = SpecDataset(long, [0], 8, random_crop=True)
    evals = SpecDataset(long, [0], 8)
    torch.manual_seed(0)
    starts = {int(train[0]["spec"][0, 0]) for _ in range(30)}
    assert len(starts) > 3 and max(starts) <= 12
    assert int(evals[0]["spec"][0, 0]) == 0


# --------------------------------------------------------------------------- the loop
def _linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))


def test_gradient_accumulation_matches_one_big_batch():
    # amp off: the equality is float32's; under bf16 autocast (the default on CPUs with bf16
    # matrix instructions) Adam turns rounding-level gradient differences into 1e-5 in weights
    cfg = TrainConfig(epochs=3, batch_size=8, blr=0.05, warmup_epochs=1, weight_decay=0.01, seed=1, amp=False)
    a, b = _linear_model(), _linear_model()
    ra = fit(a, Regression(), mse, cfg, progress=False)
    rb = fit(b, Regression(), mse, TrainConfig(**{**cfg.__dict__, "accum_steps": 4}), progress=False)
    assert len(ra.step_losses) == len(rb.step_losses) == 3 * 4
    np.testing.assert_allclose(ra.step_losses, rb.step_losses, rtol=1e-5, atol=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert ra.history[-1]["loss"] < ra.history[0]["loss"]


def test_fit_checkpoint_resume_is_exact(tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=8, blr=0.05, warmup_epochs=1, seed=2, checkpoint_every=1, checkpoint_min_s=0)
    full = _linear_model()
    ref = fit(full, Regression(), mse, cfg, progress=False)
    # run two epochs, then "restart the process" with a fresh model and the same command
    with pytest.raises(_Abort):
        fit(_linear_model(), Regression(), mse, cfg, checkpoint_dir=tmp_path, progress=False,
            hooks=FitHooks(on_epoch_end=_AbortAt(2)))
    resumed = _linear_model()
    res = fit(resumed, Regression(), mse, cfg, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from == (2, 0)
    assert res.step_losses == ref.step_losses
    for pa, pb in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(pa, pb)
    # a finished checkpoint returns at once with the same history
    again = fit(_linear_model(), Regression(), mse, cfg, checkpoint_dir=tmp_path, progress=False)
    assert again.history == res.history and again.resumed_from == (4, 0)


class _Noisy(Regression):
    """Regression whose examples draw from the global RNG (a random crop's kind), so a resume
    must restore it and the probe step must leave it alone."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {"x": item["x"] + 0.01 * torch.rand(5), "y": item["y"]}


class _Counter:
    """A protocol's own state (checkpointed): the sum of the steps it saw."""

    def __init__(self):
        self.total = 0

    def state_dict(self):
        return {"total": self.total}

    def load_state_dict(self, state):
        self.total = state["total"]


def _hooked_fit(ckpt_dir, stop_at=None):
    """A fit with every part in play: class-balanced sampling, accumulation, every hook, a
    checkpointed state, and with ``stop_at`` a SIGTERM during that global step."""
    from ssl_bench.train import STOP, TrainingInterrupted

    cfg = TrainConfig(epochs=3, batch_size=8, accum_steps=2, blr=0.05, warmup_epochs=1, weight_decay=0.01, seed=3,
                      checkpoint_min_s=0)
    counter, steps, records = _Counter(), [], []

    def on_step_end(global_step, model):
        steps.append(global_step)
        counter.total += global_step

    def loss(model, batch, step):
        if step.global_step == stop_at and step.micro == 1:
            STOP.signum = signal.SIGTERM
        return mse(model, batch, step)

    hooks = FitHooks(on_step_end=on_step_end, on_epoch_end=lambda epoch, m: {"seen": counter.total}, state=counter,
                     log_metrics=records.append)
    model = _linear_model()
    try:
        res = fit(model, _Noisy(), loss, cfg, checkpoint_dir=ckpt_dir, progress=False, hooks=hooks,
                  sampling=Sampling(weights=np.linspace(0.1, 2.0, 32).tolist(), epoch_size=40))
    except TrainingInterrupted:
        res = None
    finally:
        STOP.signum = None
    return res, model, counter, steps, records


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "samples_per_s")} for r in records]


def test_a_run_stopped_mid_epoch_resumes_bit_for_bit_with_sampling_accumulation_and_hooks(tmp_path):
    """Two paths that must agree: uninterrupted, and stopped inside epoch 2 then run again
    (every step of fit in play: checkpoint, resume, accumulation, weighted sampling, hooks)."""
    ref, ref_model, ref_counter, ref_steps, ref_records = _hooked_fit(tmp_path / "ref")
    assert ref.steps == 3 * 5 and ref_steps == list(range(1, 16))  # 40 draws an epoch, batches of 8
    # the signal arrives during the 8th step (global_step counts the steps before it): 3 into epoch 2
    stopped, _, _, first_steps, first_records = _hooked_fit(tmp_path / "run", stop_at=7)
    assert stopped is None and first_steps == list(range(1, 9)) and len(first_records) == 1
    res, model, counter, steps, records = _hooked_fit(tmp_path / "run")
    assert res.resumed_from == (1, 3)
    assert first_steps + steps == ref_steps
    assert res.step_losses == ref.step_losses  # bit for bit
    assert _without_timing(res.history) == _without_timing(ref.history)
    assert _without_timing(records) == _without_timing(ref_records)  # the resumed epochs logged again, then the rest
    assert counter.total == ref_counter.total
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    # the finished checkpoint: its record, model and state at once, without a step
    again, again_model, again_counter, again_steps, _ = _hooked_fit(tmp_path / "run")
    assert again_steps == [] and again.resumed_from == (3, 0) and again.step_losses == ref.step_losses
    assert again_counter.total == ref_counter.total
    for a, b in zip(again_model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)


def test_loader_workers_draw_the_same_randomness_after_a_resume_at_an_epoch_boundary(tmp_path):
    """With workers, example randomness comes from worker seeds that the loader draws from its
    own generator, reseeded each epoch: a run resumed after epoch 1 equals an uninterrupted one."""
    cfg = TrainConfig(epochs=3, batch_size=8, blr=0.05, seed=4, num_workers=1, checkpoint_min_s=0)
    full = _linear_model()
    ref = fit(full, _Noisy(), mse, cfg, progress=False)
    with pytest.raises(_Abort):
        fit(_linear_model(), _Noisy(), mse, cfg, checkpoint_dir=tmp_path, progress=False,
            hooks=FitHooks(on_epoch_end=_AbortAt(1)))
    resumed = _linear_model()
    res = fit(resumed, _Noisy(), mse, cfg, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from == (1, 0) and res.step_losses == ref.step_losses
    for a, b in zip(resumed.parameters(), full.parameters()):
        assert torch.equal(a, b)


class _WithUnusedHead(nn.Module):
    """A body the loss uses and a head it never reaches (a classifier during pretraining)."""

    def __init__(self):
        super().__init__()
        self.body = _linear_model()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.body(x)


def test_parameters_the_loss_never_reaches_are_frozen_reported_and_handed_back():
    cfg = TrainConfig(epochs=2, batch_size=8, blr=0.05, weight_decay=0.05, seed=1)
    model = _WithUnusedHead()
    head = copy.deepcopy(model.head.state_dict())
    during = []
    res = fit(model, Regression(), mse, cfg, progress=False,
              hooks=FitHooks(on_step_end=lambda s, m: during.append(m.head.weight.requires_grad)))
    assert res.frozen_parameters == ["head.weight", "head.bias"]
    assert during and not any(during)  # frozen while training
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head.items())  # weight decay left it too
    assert all(p.requires_grad for p in model.parameters())  # handed back as it came
    # left trainable, AdamW skips them (no gradient): the same run, bit for bit
    kept = _WithUnusedHead()
    res_kept = fit(kept, Regression(), mse, cfg, progress=False, freeze_unused=False)
    assert res_kept.frozen_parameters == [] and res_kept.step_losses == res.step_losses
    for a, b in zip(kept.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_frozen_parameters_are_handed_back_when_fit_raises():
    model = _WithUnusedHead()
    with pytest.raises(_Abort):
        fit(model, Regression(), mse, TrainConfig(epochs=2, batch_size=8), progress=False,
            hooks=FitHooks(on_epoch_end=_AbortAt(0)))
    assert all(p.requires_grad for p in model.parameters())


def test_checkpoints_wait_checkpoint_min_s_but_the_last_epoch_is_always_written(tmp_path, monkeypatch):
    import ssl_bench.train.loop as loop_mod

    written = []
    real = loop_mod.save_train_checkpoint

    def spy(path, model, optimizer, schedule, scaler, epoch, step, *args, **kwargs):
        written.append((epoch, kwargs["finished"]))
        return real(path, model, optimizer, schedule, scaler, epoch, step, *args, **kwargs)

    monkeypatch.setattr(loop_mod, "save_train_checkpoint", spy)
    cfg = TrainConfig(epochs=4, batch_size=8, blr=0.05, seed=2, checkpoint_every=1, checkpoint_min_s=0)
    fit(_linear_model(), Regression(), mse, cfg, checkpoint_dir=tmp_path / "every", progress=False)
    assert written == [(1, False), (2, False), (3, False), (4, True)]
    written.clear()
    slow = dataclasses.replace(cfg, checkpoint_min_s=3600)  # a run shorter than that: only its end
    fit(_linear_model(), Regression(), mse, slow, checkpoint_dir=tmp_path / "short", progress=False)
    assert written == [(4, True)]
    with pytest.raises(TrainConfigError, match="checkpoint_min_s"):
        dataclasses.replace(cfg, checkpoint_min_s=-1).check()


class _Abort(Exception):
    pass


class _AbortAt:
    """on_epoch_end that kills the run during epoch index ``epoch`` (before its checkpoint)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, epoch, model):
        if epoch == self.epoch:
            raise _Abort()


def test_batch_larger_than_dataset_is_a_clear_error():
    with pytest.raises(TrainConfigError, match="larger than the 32 training examples"):
        fit(_linear_model(), Regression(), mse, TrainConfig(batch_size=64), progress=False)


def test_nan_loss_is_reported():
    def bad(model, batch, step):
        return mse(model, batch, step) * float("nan")

    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(_linear_model(), Regression(), bad, TrainConfig(batch_size=8, log_every=1), progress=False)


def test_predict_keeps_order(device):
    ds = Regression(n=13)
    out = predict(lambda b: b["y"][:, None] * 2, ds, batch_size=4, device=device)
    torch.testing.assert_close(out[:, 0], ds.y * 2)


# --------------------------------------------------------------------------- augmentation
def test_spec_augment_masks_one_band_each():
    torch.manual_seed(0)
    x = torch.ones(16, 40, 20)
    y = augment.spec_augment(x, freq_mask=8, time_mask=10)
    assert torch.equal(x, torch.ones(16, 40, 20))  # input untouched
    for clip in y:
        zero_bins = (clip == 0).all(dim=0).sum().item()
        zero_frames = (clip == 0).all(dim=1).sum().item()
        assert zero_bins < 8 and zero_frames < 10
        # masked cells form one frequency band and one time span
        cols = torch.nonzero((clip == 0).all(dim=0)).flatten()
        if len(cols):
            assert cols.max() - cols.min() + 1 == len(cols)
    assert (y == 0).any()
    assert torch.equal(augment.spec_augment(x, 0, 0), x)


def test_mixup_is_a_power_domain_mix_with_matching_labels():
    torch.manual_seed(0)
    x = torch.randn(64, 6, 5)
    y = torch.nn.functional.one_hot(torch.arange(64) % 4, 4).float()
    mx, my = augment.mixup(x, y, prob=0.5, alpha=2.0)
    mixed = ~torch.isclose(mx, x).all(dim=(1, 2))
    assert 10 < mixed.sum() < 54  # about half the clips
    torch.testing.assert_close(my.sum(dim=1), torch.ones(64))
    assert torch.equal(mx[~mixed], x[~mixed]) and torch.equal(my[~mixed], y[~mixed])
    # every mixed clip is log(l e^a + (1-l) e^b) for the lambda its label reveals and some partner b
    for i in torch.nonzero(mixed).flatten():
        lam = my[i, (torch.arange(64) % 4)[i]].item()
        candidates = [j for j in range(64) if j != i]
        errs = [(mx[i] - torch.log(lam * x[i].exp() + (1 - lam) * x[j].exp())).abs().max().item() for j in candidates]
        if lam < 1 - 1e-6:  # lam == 1 cannot happen for a mixed clip, but a same-class partner hides it
            assert min(errs) < 1e-4
    # prob 0 is the identity
    a, b = augment.mixup(x, y, prob=0.0, alpha=2.0)
    assert a is x and b is y


# --------------------------------------------------------------------------- data
def test_fit_frames_and_targets():
    x = torch.randn(5, 3)
    assert torch.equal(fit_frames(x, 3), x[:3])
    padded = fit_frames(x, 7)
    assert padded.shape == (7, 3) and torch.equal(padded[5:], torch.zeros(2, 3))
    feats = toy_features(8, 4)
    assert label_targets(feats.clips, 4, "multiclass").tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    multi = label_targets(feats.clips, 4, "multilabel")
    assert multi.shape == (8, 4) and multi.sum() == 8
    ds = SpecDataset(feats, [2, 5], T, targets=label_targets(feats.clips, 4, "multiclass"))
    item = ds[1]
    assert item["spec"].shape == (T, 4) and item["index"] == 5 and int(item["target"]) == 1


# --------------------------------------------------------------------------- protocols
def test_pretrain_masks_do_not_depend_on_the_micro_batch_split():
    model = toy_model()
    spec = torch.randn(8, T, 4)
    whole = pretrain_loss(model, {"spec": spec}, StepContext(0, 0, 5, 0, 0, 8, 0))
    halves = [pretrain_loss(model, {"spec": spec[o:o + 4]}, StepContext(0, 0, 5, m, o, 8, 0))
              for m, o in enumerate((0, 4))]
    torch.testing.assert_close(whole, sum(halves) / 2)


def test_pretrain_lowers_the_loss(tmp_path, device):
    split = toy_split()
    model = toy_model()
    cfg = toy_config(pretrain={"epochs": 6})
    records = []
    res = pretrain(model, split.dataset("train", with_targets=False), cfg, device=device,
                   checkpoint_dir=tmp_path, progress=False, log_metrics=records.append)
    assert [r["epoch"] for r in records] == list(range(1, 7)) and records[0]["protocol"] == "pretrain"
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert (tmp_path / "last.pt").is_file()


def test_finetune_selects_the_epoch_on_validation_and_scores_test_once(monkeypatch, tmp_path):
    split = toy_split()
    model = toy_model()
    calls = []
    valid_values = iter([0.5, 0.9, 0.7])

    def fake_score(m, data, part, **kw):
        calls.append((part, {k: v.detach().clone() for k, v in m.state_dict().items()}))
        if part == "valid":
            return {"accuracy": next(valid_values)}
        return {"accuracy": 0.123}

    monkeypatch.setattr(ft, "score", fake_score)
    res = ft.finetune(model, split, toy_config(), device="cpu", checkpoint_dir=tmp_path, progress=False)
    parts = [p for p, _ in calls]
    assert parts == ["valid", "valid", "valid", "test"]  # test is scored once, at the end
    assert res.best_epoch == 2 and res.valid == {"accuracy": 0.9} and res.test == {"accuracy": 0.123}
    best_weights, test_weights = calls[1][1], calls[3][1]
    for k in best_weights:
        assert torch.equal(best_weights[k], test_weights[k]), k  # the test model is epoch 2's
    assert not torch.equal(calls[1][1]["head.1.weight"], calls[2][1]["head.1.weight"])
    assert sorted(p.name for p in tmp_path.glob("best-e*.pt")) == ["best-e2.pt"]


def test_finetune_learns_the_toy_task(device):
    split = toy_split()
    res = ft.finetune(toy_model(), split, toy_config(finetune={"epochs": 6, "mixup": 0.3, "specaug_time": 2}),
                      device=device, progress=False)
    assert res.test["accuracy"] >= 0.75
    assert res.selection == "valid" and 1 <= res.best_epoch <= 6


def test_finetune_without_validation_uses_the_last_epoch():
    split = toy_split(n_valid=0)
    res = ft.finetune(toy_model(), split, toy_config(finetune={"epochs": 2}), device="cpu", progress=False)
    assert res.selection == "last" and res.best_epoch == 2


def test_probe_chooses_C_on_validation_only():
    rng = np.random.default_rng(0)
    X = {p: rng.normal(size=(n, 6)) for p, n in (("train", 60), ("valid", 30), ("test", 30))}
    w = rng.normal(size=(6, 3))
    y = {p: (x @ w + rng.normal(scale=2.0, size=(len(x), 3))).argmax(1) for p, x in X.items()}
    kw = dict(num_classes=3, multilabel=False, metrics=["accuracy"], Cs=[1e-4, 1e-2, 1.0, 100.0])
    res = fit_linear(X, y, **kw)
    best_valid = max(res.valid_by_C.values())
    assert res.C == next(c for c, v in res.valid_by_C.items() if v == best_valid)
    assert res.valid["accuracy"] == best_valid
    # any test labels give the same choice of C
    for seed in range(3):
        y2 = dict(y, test=np.random.default_rng(seed).integers(0, 3, size=30))
        assert fit_linear(X, y2, **kw).C == res.C
    with pytest.raises(ValueError, match="no validation data"):
        fit_linear(X, dict(y, valid=np.zeros(0, dtype=int)), **{**kw, "Cs": [1.0, 2.0]})


def test_probe_multilabel_and_missing_classes():
    rng = np.random.default_rng(1)
    X = {p: rng.normal(size=(40, 4)) for p in ("train", "valid", "test")}
    y = {p: (x[:, :3] > 0).astype(np.float32) for p, x in X.items()}
    res = fit_linear(X, y, num_classes=3, multilabel=True, metrics=["mAP"], Cs=[1.0])
    assert res.test["mAP"] > 0.8
    # a class never seen in training gets probability 0 instead of a shifted column
    yc = {p: np.where(v == 3, 2, v) for p, v in
          {p: rng.integers(0, 4, size=40) for p in ("train", "valid", "test")}.items()}
    yc["test"][0] = 3
    out = fit_linear(X, yc, num_classes=4, multilabel=False, metrics=["accuracy"], Cs=[1.0])
    assert 0.0 <= out.test["accuracy"] <= 1.0


def test_linear_probe_caches_embeddings(tmp_path, device):
    split = toy_split()
    model = toy_model()
    cfg = toy_config()
    r1 = linear_probe(model, split, cfg, device=device, cache_dir=tmp_path, progress=False)
    assert not r1.from_cache and len(list(tmp_path.glob("*.npy"))) == 1
    r2 = linear_probe(model, split, cfg, device=device, cache_dir=tmp_path, progress=False)
    assert r2.from_cache and r2.test == r1.test and r2.C == r1.C
    # other weights -> another key
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.encoder.patch_embed.weight.add_(1.0)
    assert weights_hash(other.encoder) != weights_hash(model.encoder)
    idx = np.arange(10)
    assert embedding_key(other, split, idx) != embedding_key(model, split, idx)
    # same weights, other pooling: another key (the embedding differs)
    pooled = copy.deepcopy(model)
    pooled.encoder.cfg = dataclasses.replace(model.encoder.cfg, pool="cls")
    assert embedding_key(pooled, split, idx) != embedding_key(model, split, idx)
    assert embedding_key(copy.deepcopy(model), split, idx) == embedding_key(model, split, idx)
    emb, cached = extract_embeddings(model, split, idx, batch_size=4, device="cpu")
    assert emb.shape == (10, 16) and not cached
