"""Launchers and the job graph of a sweep.

A sweep (``ssl-bench run`` with comma lists, several tasks, a suite) is a graph of units
(:mod:`ssl_bench.launch.units`): features once per (task, frontend), an encoder once per
pretraining recipe, evaluation per (run, split).  A launcher (:mod:`ssl_bench.launch.base`;
``local`` in this process or a pool, ``slurm`` and ``submitit-local`` through submitit)
executes them; :func:`ssl_bench.launch.sweep.run_sweep` plans, launches, waits and reports;
:mod:`ssl_bench.launch.state` keeps what a launch knows for ``ssl-bench status``.  Identity by
content makes a rerun submit only what is missing.  Importing this package imports nothing
heavy: a launcher's job imports what it runs.
"""
