"""Offline side: data loading, training, evaluation and index publication."""

__all__: list[str] = []
