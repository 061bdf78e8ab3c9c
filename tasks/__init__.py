"""Built-in task plugins (installed as ``ssl_bench.tasks``)."""
