"""Staged batch pipelines and the ``recsys-mtl`` command line."""

__all__: list[str] = []
