"""What a new user meets first: checks before data work, self-describing checkpoints, tables
that tell runs apart, one-line errors, and runs that say what they are doing."""

from __future__ import annotations

import pytest
import torch

from ssl_bench import runner as runner_mod
from ssl_bench.config import ConfigError
from ssl_bench.registry import set_registry
from ssl_bench.runner import run_experiment
from trainfixtures import tiny_config, tiny_registry


@pytest.fixture(scope="module")
def registry():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reg = tiny_registry()
    old = set_registry(reg)
    yield reg
    set_registry(old)
    torch.set_num_threads(threads)


class _Stop(RuntimeError):
    pass


def _stop_at_features(monkeypatch, seen):
    def extract(self, clips):
        seen.update(pretrain=self.config["pretrain"]["batch_size"], finetune=self.config["finetune"]["batch_size"])
        raise _Stop("features")

    monkeypatch.setattr(runner_mod._Experiment, "extract", extract)


def test_a_batch_larger_than_the_data_is_capped_before_features_with_a_warning(registry, tmp_path, monkeypatch,
                                                                              capsys):
    seen: dict = {}
    _stop_at_features(monkeypatch, seen)
    cfg = tiny_config(registry, **{"pretrain.batch_size": 512, "finetune.batch_size": 64})
    with pytest.raises(_Stop):
        run_experiment(cfg, data_dir=tmp_path / "data", results_root=tmp_path / "res", progress=False)
    # tinytones: 18 training clips per fold; fine-tuning keeps 14 after a quarter is carved out
    assert seen == {"pretrain": 18, "finetune": 14}
    err = capsys.readouterr().err
    assert "pretrain.batch_size 512 is larger than the 18 training examples" in err
    assert "using finetune.batch_size=14" in err


def test_accumulation_no_split_can_fill_is_an_error_naming_the_keys_before_features(registry, tmp_path,
                                                                                     monkeypatch):
    seen: dict = {}
    _stop_at_features(monkeypatch, seen)
    cfg = tiny_config(registry, **{"pretrain.batch_size": 512, "pretrain.accum_steps": 32})
    with pytest.raises(ConfigError, match=r"pretrain\.batch_size: the 18 training examples .* "
                                          r"pretrain\.accum_steps=32 .* lower pretrain\.accum_steps"):
        run_experiment(cfg, data_dir=tmp_path / "data", results_root=tmp_path / "res", progress=False)
    assert seen == {}  # nothing was extracted


def test_the_training_loop_names_the_key_and_a_value_that_fits():
    from ssl_bench.train import TrainConfig, TrainConfigError, fit

    data = [{"x": torch.randn(2), "y": torch.randn(1)} for _ in range(10)]
    model = torch.nn.Linear(2, 1)

    def loss(m, batch, ctx):
        return ((m(batch["x"]) - batch["y"]) ** 2).mean()

    with pytest.raises(TrainConfigError, match=r"finetune\.batch_size 16 is larger than the 10 .* "
                                               r"set finetune\.batch_size=10 or lower"):
        fit(model, data, loss, TrainConfig(batch_size=16), progress=False, section="finetune")
