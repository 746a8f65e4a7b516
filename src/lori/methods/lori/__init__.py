"""LoRi, all in one place: ``method.py`` (the student's rendering and loss), ``teacher.py`` (the teacher's rendering,
the cache's fingerprint and the statistics pass of ``lori precompute``), ``cache.py`` (the statistics cache on disk)."""

from .method import METHOD

__all__ = ["METHOD"]
