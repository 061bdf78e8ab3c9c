"""Built-in suites (``register_suites``), over the built-in tasks.

* ``hear-scene``: HEAR 2021's scene-task probe on the tasks ssl-bench ships (ESC-50's five
  folds, Speech Commands' official split): the ``mlp`` protocol with HEAR's grid (1024 hidden
  units, dropout 0.1, Adam at 3.2e-3, 1e-3, 3.2e-4 and 1e-4, patience 20, up to 500 epochs),
  chosen on each split's validation.  Not HEAR's numbers: HEAR trains ESC-50 on three folds,
  picks its grid point on fold 0 only, and its probe has batch norm and up to two hidden layers.
* ``smoke``: the synthetic task (generated, no download) with the linear and kNN probes: a
  minute's check that an encoder runs end to end.
"""

from __future__ import annotations

from ssl_bench import hookimpl
from ssl_bench.suites import Suite, SuiteTask

HEAR_MLP = {"mlp.hidden": [1024], "mlp.lr": [3.2e-3, 1e-3, 3.2e-4, 1e-4], "mlp.dropout": 0.1, "mlp.patience": 20,
            "mlp.max_epochs": 500}


@hookimpl
def register_suites(register):
    register("hear-scene", Suite(
        version="1",
        description="HEAR 2021's scene probe (MLP grid) on ESC-50 and Speech Commands",
        tasks=(SuiteTask("esc50", ("mlp",), HEAR_MLP), SuiteTask("speechcommands", ("mlp",), HEAR_MLP))))
    register("smoke", Suite(
        version="1",
        description="the synthetic task with linear and kNN probes: an encoder runs end to end",
        tasks=(SuiteTask("synthetic", ("linear", "knn")),)))
