"""The online pre-ranking service (FastAPI)."""

__all__: list[str] = []
