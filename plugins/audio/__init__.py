"""Built-in audio components: the Kaldi fbank and raw waveform frontends, maskers and the masked-MSE objective."""

from __future__ import annotations

from ssl_bench import hookimpl

from .frontend import KaldiFbank
from .maskers import FrequencyMasker, RandomMasker, TimeFrequencyMasker, TimeMasker
from .objectives import MaskedMSE
from .waveform import Waveform

__all__ = ["FrequencyMasker", "KaldiFbank", "MaskedMSE", "RandomMasker", "TimeFrequencyMasker", "TimeMasker", "Waveform"]


@hookimpl
def register_frontends(register):
    register("kaldi-fbank", KaldiFbank)
    register("waveform", Waveform)


@hookimpl
def register_maskers(register):
    register("random", RandomMasker)
    register("time", TimeMasker)
    register("frequency", FrequencyMasker)
    register("time-frequency", TimeFrequencyMasker)


@hookimpl
def register_objectives(register):
    register("masked-mse", MaskedMSE)
