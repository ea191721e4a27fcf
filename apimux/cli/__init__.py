"""The ``apimux`` command line: ``run`` (JSONL batches), ``check`` and ``stats``."""
