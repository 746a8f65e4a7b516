"""lori: distil explicit chain of thought into implicit (latent) reasoning with LoRi low-rank distillation.

From Python, :func:`lori.load` loads a trained student of any method (a run folder, a checkpoint folder or a
``lori export`` folder) and its ``generate`` answers questions with the method's own latent loop::

    import lori
    student = lori.load("out/demo/lori")
    print(student.generate(["a = 7 ; b = a * 7 ; ? b"])[0].answer)

(see :mod:`lori.student`). ``import lori`` itself stays light: torch and transformers load on first use.
"""

import importlib

__version__ = "0.1.0"

_API = {"load": "lori.student", "Student": "lori.student", "Generated": "lori.student"}


def __getattr__(name):  # PEP 562: lori.load etc. import lori.student (torch, transformers) only when used
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'lori' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])


__all__ = ["Generated", "Student", "load"]
