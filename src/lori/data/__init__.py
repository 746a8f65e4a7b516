"""Data: the one example schema, readers for the benchmark formats, and the multiplication generator."""

from lori.data.multiplication import generate as generate_multiplication
from lori.data.multiplication import make_example
from lori.data.readers import READERS, read_examples, write_icot
from lori.data.schema import Example

__all__ = ["Example", "READERS", "generate_multiplication", "make_example", "read_examples", "write_icot"]
