"""Plugin hooks.  A plugin implements any of these with ``@ssl_bench.hookimpl``.

Every hook receives a ``register(name, factory)`` callback and calls it once per thing it
brings, so a plugin reads like a list of what it adds::

    from ssl_bench import hookimpl

    @hookimpl
    def register_maskers(register):
        register("checkerboard", CheckerboardMasker)

Factories follow the convention in :mod:`ssl_bench.components`: a ``Config`` dataclass and
a call ``factory(cfg, build)``, ``build`` being the model's
:class:`ssl_bench.components.BuildContext` (methods too).  Model factories are
:class:`ssl_bench.model.ModelSpec` objects; task factories are called as
``factory(data_dir=...)``; protocols are :class:`ssl_bench.protocols.base.Protocol` classes;
metrics are :class:`ssl_bench.metrics.Metric` objects; commands are
:class:`ssl_bench.commands.Command` objects; launchers are :class:`ssl_bench.launch.base.Launcher`
classes; suites are :class:`ssl_bench.suites.Suite` objects.  Registering a name that another
plugin already registered is an error naming both plugins.
"""

from __future__ import annotations

import pluggy

#: The kinds of model part a plugin can register, in the order a model is built.
COMPONENT_KINDS = ("frontend", "encoder", "masker", "decoder", "objective", "method")
#: Everything a plugin can register (one ``register_<kind>s`` hook each).
KINDS = COMPONENT_KINDS + ("model", "task", "protocol", "metric", "command", "launcher", "suite")

hookspec = pluggy.HookspecMarker("ssl_bench")
hookimpl = pluggy.HookimplMarker("ssl_bench")


@hookspec
def register_frontends(register):
    """Register waveform-to-spectrogram frontends (e.g. ``kaldi-fbank``)."""


@hookspec
def register_maskers(register):
    """Register masking strategies (``random``, ``time``, ``frequency``, ...)."""


@hookspec
def register_encoders(register):
    """Register encoders: spectrogram patches to token embeddings."""


@hookspec
def register_decoders(register):
    """Register pretraining decoders: visible tokens plus mask tokens to patch predictions."""


@hookspec
def register_objectives(register):
    """Register pretraining objectives (``masked-mse``, ...)."""


@hookspec
def register_methods(register):
    """Register pretraining methods (``mae``, ``eat``): components that own one pretraining step.

    See :class:`ssl_bench.components.Method`: ``loss(model, spec, step)`` gives the loss of one
    micro-batch, ``step`` being its :class:`ssl_bench.train.StepContext`.  A model preset names
    its method in its ``components`` (``"method": "mae"``) and ``--set method=NAME`` chooses
    another.
    """


@hookspec
def register_models(register):
    """Register model presets: :class:`ssl_bench.model.ModelSpec` objects."""


@hookspec
def register_tasks(register):
    """Register downstream tasks: factories called as ``factory(data_dir=None)``."""


@hookspec
def register_protocols(register):
    """Register evaluation protocols (``linear``, ``knn``, ...): :class:`ssl_bench.protocols.base.Protocol`
    subclasses.  Each becomes a ``--protocols`` choice, a ``--set NAME.field`` config section
    (its ``Config`` dataclass) and, unless it opts out, an ``ssl-bench NAME`` subcommand."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics by name: :class:`ssl_bench.metrics.Metric` objects (a function
    and its input kind: clip scores ``[N, C]`` against targets, or events per file against
    reference events; a plain function is a clip metric).  Tasks list metrics by these names;
    :func:`ssl_bench.metrics.evaluate` and :func:`~ssl_bench.metrics.evaluate_events` score
    with them."""


@hookspec
def register_commands(register):
    """Register CLI subcommands (``bench``, ``reconstruct``): :class:`ssl_bench.commands.Command`
    objects, added to ``ssl-bench`` as ``ssl-bench NAME``."""


@hookspec
def register_launchers(register):
    """Register launchers (``local``, ``slurm``, ...): :class:`ssl_bench.launch.base.Launcher`
    subclasses, chosen with ``ssl-bench run --launcher NAME`` and configured with ``--launch
    KEY=VALUE`` (the fields of their ``Config`` dataclass).  A launcher decides where the units
    of a sweep run, never what they compute."""


@hookspec
def register_suites(register):
    """Register suites: named, versioned lists of (task, protocols, settings),
    :class:`ssl_bench.suites.Suite` objects, run with ``ssl-bench run --suite NAME``."""
