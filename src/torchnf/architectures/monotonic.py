"""Architectures: monotonic families (see torchnf.architectures.core for the shared builders)."""

__all__: list[str] = []
