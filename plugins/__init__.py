"""Built-in model and component plugins (installed as ``ssl_bench.plugins``)."""
