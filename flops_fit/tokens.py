"""Token windows and token files: what every data source (flops_fit/data.py,
flops_fit/vision.py) builds its samples from, and the node-local token caches they share.

A TokenDataset is non-overlapping windows of a memory-mapped token array, so every worker
on a node shares one copy in the page cache. Token caches live in cache_dir (default
~/.cache/flops_fit), keyed by the settings and by every source file's path, size and
modification time: a changed file means a new cache, never a stale one.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch

from . import checks
from .storage import cache_base, replace_atomically

BYTE_VOCAB = 256  # UTF-8 bytes: every text is representable, no tokenizer to ship
SEPARATOR = 0  # appended after every file: NUL never occurs in text, so it marks "document ends"
CACHE_VERSION = 1  # bump when the token caches' layout or tokenization changes


class TokenDataset(torch.utils.data.Dataset):
    """Non-overlapping windows of seq_len + 1 tokens (inputs plus the shifted target)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, vocab_size: int = BYTE_VOCAB):
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be a 1-D array of token ids, got shape {tokens.shape}")
        checks.integer(seq_len, "TokenDataset", "seq_len", "tokens per sample")
        self.tokens = tokens
        self.seq_len = seq_len
        self.num_tokens = len(tokens)
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return max(0, (self.num_tokens - 1) // self.seq_len)

    def __getitem__(self, i: int) -> torch.Tensor:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        start = i * self.seq_len
        return torch.from_numpy(self.tokens[start:start + self.seq_len + 1].astype(np.int64))


def settings_repr(obj, *positional, **settings) -> str:
    """`Name(positional, key=value, ...)`, every value as its repr: the call that rebuilds a
    data source. The sweep record compares Tasks by these strings, so they hold settings only."""
    args = [repr(v) for v in positional] + [f"{k}={v!r}" for k, v in settings.items()]
    return f"{type(obj).__name__}({', '.join(args)})"


def keep_settings(obj, **settings) -> None:
    """Store a data source's settings as its attributes. A source holds settings only, so it
    pickles small and each Ray worker builds the data itself when it calls the source."""
    for name, value in settings.items():
        setattr(obj, name, value)


class WindowSource:
    """What the token sources share: samples are windows of seq_len tokens, and the
    vocabulary is as given, else found once by `_scan_vocab` and remembered."""

    seq_len: int
    _vocab_size: int | None

    @property
    def tokens_per_sample(self) -> int:
        return self.seq_len

    @property
    def vocab_size(self) -> int:
        if self._vocab_size is None:
            self._vocab_size = self._scan_vocab()
        return self._vocab_size


def check_windows(call: str, seq_len, val_every=None, unit: str = "file") -> None:
    """The settings the token sources share, checked before any file is read."""
    checks.integer(seq_len, call, "seq_len", "tokens per sample (the window length)")
    if val_every is not None:
        checks.integer(val_every, call, "val_every", f"every val_every-th {unit} is validation", minimum=2)


def check_splits(train: np.ndarray, val: np.ndarray, seq_len: int, what: str, fixes: tuple):
    for name, arr, fix in (("training", train, fixes[0]), ("validation", val, fixes[1])):
        if len(arr) < seq_len + 1:
            raise ValueError(
                f"{what}: the {name} split has {len(arr)} tokens, fewer than one sample of "
                f"seq_len + 1 = {seq_len + 1}; {fix}"
            )


def cache_folder(cache_dir, prefix: str, settings: str, files: list) -> Path:
    """cache_dir (default ~/.cache/flops_fit) / <prefix>-<hash of the settings and of every
    file's path, size and mtime>: a changed file means a new cache, never a stale one."""
    h = hashlib.sha256(f"v{CACHE_VERSION} {settings}\n".encode())
    for f in files:  # a pathlib.Path or a RemoteFile
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return cache_base(cache_dir) / f"{prefix}-{h.hexdigest()[:16]}"


def write_token_file(path, tokens, dtype: str = "uint16") -> Path:
    """Write token ids as a flat little-endian binary file (nanoGPT's train.bin layout)."""
    path = Path(path)
    dt = np.dtype(dtype).newbyteorder("<")
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(dt).max):
        raise ValueError(f"token ids span [{tokens.min()}, {tokens.max()}], outside {dtype}; pass a wider dtype")
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda f: f.write(tokens.astype(dt).tobytes()))
    return path


def open_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist")
    size = path.stat().st_size
    if size % dtype.itemsize != 0:
        raise ValueError(
            f"{path} has {size} bytes, not a multiple of {dtype.itemsize}: "
            f"truncated or not a {dtype.name} token file (set dtype=...)"
        )
    if size == 0:
        raise ValueError(f"token file {path} is empty")
    return np.memmap(path, dtype=dtype, mode="r")
