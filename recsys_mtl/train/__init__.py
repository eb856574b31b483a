"""Training: batches, task losses, loss combination, the trainer loop, evaluation."""

__all__: list[str] = []
