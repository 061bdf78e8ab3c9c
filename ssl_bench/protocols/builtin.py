"""The built-in protocols, registered through the same hook as any plugin's."""

from __future__ import annotations

from ..hookspecs import hookimpl
from .events import EventsProtocol
from .events_finetune import EventsFinetuneProtocol
from .finetune import FinetuneProtocol
from .knn import KNNProtocol
from .layers import LayersProtocol
from .linear import LinearProtocol
from .mlp import MLPProtocol
from .pretrain import PretrainProtocol


@hookimpl
def register_protocols(register):
    register("pretrain", PretrainProtocol)
    register("finetune", FinetuneProtocol)
    register("linear", LinearProtocol)
    register("knn", KNNProtocol)
    register("mlp", MLPProtocol)
    register("layers", LayersProtocol)
    register("events", EventsProtocol)
    register("events_finetune", EventsFinetuneProtocol)
