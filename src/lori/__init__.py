"""lori: distil explicit chain of thought into implicit (latent) reasoning with LoRi low-rank distillation."""

__version__ = "0.1.0"
