"""Data: ingest (every GroupLens layout, generic CSV/Parquet), synthetic logs, features, splits."""

__all__: list[str] = []
