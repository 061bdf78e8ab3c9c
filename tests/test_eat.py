"""The eat plugin: inverse block masking, the CNN decoder, the EMA teacher and its targets, the
loss, bit-identical resume of EAT pretraining (teacher included), and the presets."""

from __future__ import annotations

import signal

import pytest
import torch
import torch.nn.functional as F
from ssl_bench.plugins.eat import EAT, CNNDecoder, InverseBlockMasker, ema_decay_at

import ssl_bench.encoders as pre
from ssl_bench import create_model
from ssl_bench.components import FREQ_MAJOR, TIME_MAJOR, BuildContext, EncoderOutput
from ssl_bench.config import ConfigError, resolve
from ssl_bench.registry import get_registry
from ssl_bench.train import CHECKPOINT_NAME, STOP, StepContext, TrainingInterrupted, load_train_checkpoint, param_groups

#: A tiny EAT on a 6 x 3 patch grid (96 frames x 48 bins), 2 clones per clip.
TINY = {"frontend.num_frames": 96, "frontend.num_bins": 48, "frontend.mean": 0.0, "frontend.std": 0.5,
        "method.clones": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(**overrides):
    torch.manual_seed(0)
    return create_model("eat", preset="tiny", **{**TINY, **overrides})


def _spec(n=4, seed=1):
    return torch.randn(n, 96, 48, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- masking
@pytest.mark.parametrize("grid,ratio", [((64, 8), 0.8), ((13, 8), 0.8), ((6, 3), 0.5), ((1, 1), 0.8), ((5, 2), 0.0)])
def test_inverse_block_masks_hide_the_same_count_in_every_row(grid, ratio):
    masker = InverseBlockMasker(InverseBlockMasker.Config(ratio=ratio))
    mask = masker(32, grid, TIME_MAJOR, "cpu", torch.Generator().manual_seed(0))
    cells = grid[0] * grid[1]
    assert mask.shape == (32, cells) and mask.dtype == torch.bool
    keep = max(1, int(cells * (1 - ratio)))
    assert (mask.sum(dim=1) == cells - keep).all()


def _neighbour_fraction(kept: torch.Tensor) -> float:
    """Fraction of kept cells with a kept 4-neighbour, ``kept`` ``[B, n_time, n_freq]``."""
    k = kept.float()[:, None]
    neigh = F.conv2d(k, torch.tensor([[[[0., 1, 0], [1, 0, 1], [0, 1, 0]]]]), padding=1)[:, 0]
    return float(((neigh > 0) & kept).sum() / kept.sum())


def test_visible_patches_come_in_blocks_and_cover_the_grid_evenly():
    g = torch.Generator().manual_seed(0)
    blocks = InverseBlockMasker(InverseBlockMasker.Config(ratio=0.8))(512, (64, 8), TIME_MAJOR, "cpu", g)
    kept = ~blocks.view(512, 64, 8)
    # a random 20% has a kept neighbour for ~60% of its cells; 5 x 5 blocks for nearly all
    assert _neighbour_fraction(kept) > 0.9
    # centres over the extended grid: border rows are kept about as often as the middle ones
    per_freq = kept.float().mean(dim=(0, 1))
    assert per_freq.min() > 0.6 * per_freq.max()
    per_time = kept.float().mean(dim=(0, 2))
    assert per_time[:4].mean() > 0.6 * per_time[20:44].mean()


def test_masks_follow_the_token_layout_and_the_generator():
    masker = InverseBlockMasker(InverseBlockMasker.Config(ratio=0.8, block_time=3, block_freq=2))
    tm = masker(4, (10, 6), TIME_MAJOR, "cpu", torch.Generator().manual_seed(3))
    fm = masker(4, (10, 6), FREQ_MAJOR, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(tm.view(4, 10, 6), fm.view(4, 6, 10).transpose(1, 2))
    again = masker(4, (10, 6), TIME_MAJOR, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(tm, again)
    with pytest.raises(ValueError, match="ratio"):
        InverseBlockMasker(InverseBlockMasker.Config(ratio=1.0))


# --------------------------------------------------------------------------- decoder
def _decoder(layout, kernel=3, groups=2, depth=2, dim=8, enc_dim=8, grid=(5, 3)):
    build = BuildContext(encoder_dim=enc_dim, grid=grid, layout=layout, num_prefix_tokens=1)
    torch.manual_seed(0)
    return CNNDecoder(CNNDecoder.Config(dim=dim, depth=depth, kernel=kernel, groups=groups), build)


def _visible(mask, tokens, prefix=1):
    ids = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, : int((~mask[0]).sum())]
    vis = torch.gather(tokens, 1, ids[..., None].expand(-1, -1, tokens.shape[-1]))
    return EncoderOutput(torch.cat([torch.zeros(tokens.shape[0], prefix, tokens.shape[-1]), vis], 1), ids, prefix)


def test_decoder_puts_tokens_back_on_the_grid():
    grid, L = (5, 3), 15
    tokens = torch.randn(2, L, 8)
    mask = InverseBlockMasker(InverseBlockMasker.Config(ratio=0.6))(2, grid, TIME_MAJOR, "cpu",
                                                                   torch.Generator().manual_seed(0))
    dec = _decoder(TIME_MAJOR, kernel=1, groups=1, depth=1)  # 1 x 1: each position on its own
    pred = dec(_visible(mask, tokens), mask, grid)
    assert pred.shape == (2, L, 8)
    alone = dec(EncoderOutput(torch.cat([torch.zeros(2, 1, 8), tokens], 1), None, 1), torch.zeros(2, L, dtype=bool), grid)
    torch.testing.assert_close(pred[~mask], alone[~mask])  # visible tokens at their own positions
    masked = pred[mask]
    torch.testing.assert_close(masked, masked[:1].expand_as(masked))  # every hidden cell: the mask token


def test_decoder_sees_the_grid_whatever_the_token_order():
    grid = (5, 3)
    tm_dec, fm_dec = _decoder(TIME_MAJOR), _decoder(FREQ_MAJOR)
    fm_dec.load_state_dict(tm_dec.state_dict())
    tokens = torch.randn(2, 15, 8)  # time-major
    none = torch.zeros(2, 15, dtype=torch.bool)
    cls = torch.zeros(2, 1, 8)
    tm = tm_dec(EncoderOutput(torch.cat([cls, tokens], 1), None, 1), none, grid)
    fm_tokens = tokens.view(2, 5, 3, 8).transpose(1, 2).reshape(2, 15, 8)
    fm = fm_dec(EncoderOutput(torch.cat([cls, fm_tokens], 1), None, 1), none, grid)
    torch.testing.assert_close(fm, tm.view(2, 5, 3, 8).transpose(1, 2).reshape(2, 15, 8))
    with pytest.raises(ValueError, match="groups"):
        _decoder(TIME_MAJOR, groups=3)


# --------------------------------------------------------------------------- teacher
def test_decay_ramps_linearly_then_holds():
    assert ema_decay_at(0, 0.9998, 0.99999, 100) == pytest.approx(0.9998)
    assert ema_decay_at(50, 0.9998, 0.99999, 100) == pytest.approx((0.9998 + 0.99999) / 2)
    assert ema_decay_at(100, 0.9998, 0.99999, 100) == ema_decay_at(10**6, 0.9998, 0.99999, 100) == 0.99999


def test_teacher_is_a_frozen_copy_updated_by_ema():
    model = _model(**{"method.ema_decay": 0.5, "method.ema_end_decay": 0.9, "method.ema_anneal_steps": 4})
    method = model.method
    assert isinstance(method, EAT)
    student, teacher = dict(model.encoder.named_parameters()), dict(method.teacher.named_parameters())
    assert student.keys() == teacher.keys()
    assert all(torch.equal(student[k], teacher[k]) and not teacher[k].requires_grad for k in teacher)
    before = {k: v.clone() for k, v in teacher.items()}
    with torch.no_grad():
        for p in model.encoder.parameters():
            if p.requires_grad:
                p.add_(1.0)
    method.after_step(model, 2)  # decay 0.5 + 0.4 * 2 / 4 = 0.7
    for k, t in teacher.items():
        if student[k].requires_grad:
            torch.testing.assert_close(t, 0.7 * before[k] + 0.3 * student[k], rtol=0, atol=1e-6)
        else:  # the fixed position table is the same in both: exactly kept
            assert torch.equal(t, before[k])
    assert int(method.num_updates) == 2 and method.on_epoch_end(model, 0) == {"ema_decay": pytest.approx(0.7)}


def test_teacher_gets_no_gradient_and_no_optimiser_slot():
    model = _model()
    loss = model.method.loss(model, _spec(), StepContext(0, 0, 0, 0, 0, 4, 0))
    loss.backward()
    assert all(p.grad is None for p in model.method.teacher.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
    assert all(p.grad is not None for p in model.decoder.parameters())
    names = [n for g in param_groups(model, 0.05) for n in g["param_names"]]
    assert names and not any(n.startswith("method.") for n in names)


def test_targets_average_the_instance_normalised_top_layers_of_the_unmasked_input():
    model = _model(**{"encoder.depth": 3, "method.top_k": 2})
    spec = _spec()
    hidden = model.method.teacher(spec, hidden_states=True).hidden_states
    assert len(hidden) == 4
    layers = [F.instance_norm(h[:, 1:].transpose(1, 2)).transpose(1, 2) for h in hidden[-2:]]
    expected = F.layer_norm((layers[0] + layers[1]) / 2, (64,))
    torch.testing.assert_close(model.method.targets(spec), expected)
    a = model.forward_pretrain(spec, generator=torch.Generator().manual_seed(0))
    b = model.forward_pretrain(spec, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.target, b.target)  # the teacher never sees a mask
    assert a.pred.shape == (8, 18, 64) and a.mask.shape == (8, 18) and a.target.shape == (4, 18, 64)
    assert (a.mask.sum(dim=1) == 18 - 3).all()
    # frame loss on the masked patches only, utterance loss on the CLS token
    per = (a.pred - a.target.repeat_interleave(2, 0)).pow(2).sum(-1) / 8.0
    torch.testing.assert_close(a.frame_loss, per[a.mask].mean())
    torch.testing.assert_close(a.loss, a.frame_loss + a.utterance_loss)


def test_clones_of_a_clip_take_their_rows_of_the_global_batch():
    model = _model()
    spec = _spec(8)
    whole = model.method.loss(model, spec, StepContext(0, 0, 5, 0, 0, 8, 0))
    halves = [model.method.loss(model, spec[o:o + 4], StepContext(0, 0, 5, m, o, 8, 0)) for m, o in enumerate((0, 4))]
    torch.testing.assert_close(whole, sum(halves) / 2)


def test_a_few_steps_lower_the_loss():
    model = _model(**{"method.ema_decay": 0.9, "method.ema_end_decay": 0.99, "method.ema_anneal_steps": 10})
    spec = _spec(8)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=2e-3)
    losses = []
    for step in range(12):
        loss = model.method.loss(model, spec, StepContext(0, step, step, 0, 0, 8, 0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.method.after_step(model, step + 1)
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


# --------------------------------------------------------------------------- resume
class _Specs(torch.utils.data.Dataset):
    def __init__(self, n=32):
        self.x = torch.randn(n, 96, 48, generator=torch.Generator().manual_seed(7))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"spec": self.x[i]}


def _pretrain(ckpt_dir=None, stop_at=None):
    """3 epochs of 4 steps; ``stop_at``: a SIGTERM "arrives" during that global step."""
    model = _model(**{"method.ema_decay": 0.9, "method.ema_end_decay": 0.99, "method.ema_anneal_steps": 8})
    config = model.config
    config["pretrain"].update(epochs=3, batch_size=8, warmup_epochs=1, checkpoint_every=1, checkpoint_min_s=0)
    config["deterministic"] = True
    original = pre.pretrain_loss

    def loss_fn(m, batch, step):
        if step.global_step == stop_at:
            STOP.signum = signal.SIGTERM
        return original(m, batch, step)

    pre.pretrain_loss = loss_fn
    try:
        res = pre.pretrain(model, _Specs(), config, device="cpu", checkpoint_dir=ckpt_dir, progress=False)
    finally:
        pre.pretrain_loss = original
    return res, {k: v.clone() for k, v in model.state_dict().items()}


def test_interrupted_eat_pretraining_resumes_bit_for_bit(tmp_path):
    ref_res, ref = _pretrain()
    assert ref_res.history[-1]["ema_decay"] == pytest.approx(0.99)
    assert not torch.equal(ref["method.teacher.blocks.0.attn.qkv.weight"], ref["encoder.blocks.0.attn.qkv.weight"])
    with pytest.raises(TrainingInterrupted):
        _pretrain(tmp_path, stop_at=5)  # epoch 2, step 2 of 4
    saved = load_train_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert (saved["epoch"], saved["step"], saved["finished"]) == (1, 2, False)
    res, weights = _pretrain(tmp_path)
    assert res.resumed_from == (1, 2)
    assert res.step_losses == ref_res.step_losses
    assert weights.keys() == ref.keys() and any(k.startswith("method.teacher.") for k in ref)
    for k, v in ref.items():
        assert torch.equal(weights[k], v), k


# --------------------------------------------------------------------------- presets
def test_presets_resolve_to_the_paper_sizes():
    base = resolve("eat", preset="base")
    assert base["method"]["name"] == "eat" and base["masker"]["name"] == "inverse-block"
    assert (base["encoder"]["dim"], base["encoder"]["depth"], base["encoder"]["heads"]) == (768, 12, 12)
    assert (base["decoder"]["name"], base["decoder"]["dim"], base["decoder"]["depth"], base["decoder"]["kernel"],
            base["decoder"]["groups"]) == ("eat-cnn", 768, 6, 3, 16)
    assert (base["masker"]["ratio"], base["masker"]["block_time"], base["method"]["clones"]) == (0.8, 5, 16)
    assert (base["method"]["ema_decay"], base["method"]["ema_end_decay"]) == (0.9998, 0.99999)
    assert base["objective"] is None and base["encoder"]["pool"] == "cls"
    assert base["finetune"]["masker"]["name"] == "time-frequency"
    tiny = resolve("eat", preset="tiny", task="synthetic")
    assert (tiny["encoder"]["dim"], tiny["encoder"]["depth"]) == (64, 2) and tiny["pretrain"]["corpus"] == "task"
    assert "eat" in get_registry().names("method") and "eat" in get_registry().names("model")


def test_base_builds_on_the_meta_device():
    with torch.device("meta"):  # no frontend: its filterbank is computed with numpy
        model = create_model("eat", preset="base", frontend=None)
    n = sum(p.numel() for p in model.encoder.parameters())
    assert 85e6 < n < 87e6  # ViT-B/16
    assert sum(p.numel() for p in model.method.teacher.parameters()) == n


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="top_k"):
        _model(**{"method.top_k": 3})
    with pytest.raises(ConfigError, match="clones"):
        _model(**{"method.clones": 0})
