"""Token sources on local disk, a shared mount or object storage (s3://, gs://).

TextCorpus and TokenFile are picklable factories: they hold paths and settings only, and
calling one (on each Ray worker) returns (train, validation) TokenDatasets backed by
memory-mapped token files, so every worker on a node shares one copy in the page cache.
A path with a scheme (s3://bucket/key, gs://...) is read through pyarrow's filesystems,
whose S3 client takes the endpoint and keys from the standard AWS variables
(AWS_ENDPOINT_URL for MinIO or an on-prem store); each node copies what it reads once
into its cache folder (default ~/.cache/flops_fit), keyed by the URI, size and
modification time, so nodes that share no disk read the same data. A local path is made
absolute on the driver and must exist on every node (a shared mount).

- TextCorpus: byte-level tokens (vocab 256) from text files; by default the .py files of
  the running Python's standard library (~12 MB on CPython 3.11), which every install has.
- TokenFile: pre-tokenized train.bin / val.bin in nanoGPT's layout (uint16 little-endian).
- HFText: a Hugging Face `datasets` dataset saved on local disk (`save_to_disk`), either a
  text column (byte-level, like TextCorpus) or a pre-tokenized column such as input_ids.
"""

import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import numpy as np
import torch

from . import checks

BYTE_VOCAB = 256  # UTF-8 bytes: every text is representable, no tokenizer to ship
SEPARATOR = 0  # appended after every file: NUL never occurs in text, so it marks "document ends"
# directories are walked for these; files named explicitly are taken whatever their extension
TEXT_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".py", ".tex", ".org", ".c", ".h", ".cpp", ".hpp", ".rs", ".go",
    ".java", ".js", ".ts", ".html", ".css", ".json", ".yaml", ".yml", ".toml", ".cfg", ".ini",
    ".csv", ".sh", ".xml",
})
SKIP_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages", "node_modules"})
STDLIB_TEST_DIRS = frozenset({"test", "tests", "idle_test"})  # test suites: repetitive fixtures
CACHE_VERSION = 1  # bump when the cache layout or tokenization changes
COPY_CHUNK = 8 << 20  # bytes per read when copying an object to the node's cache
HEAD_BYTES = 64  # check_readable reads this many bytes of a file: enough to prove access
REMOTE_CACHE = "remote"  # cache_dir/<this>: node-local copies of objects and folders
# on every node: a local path that is not there means the data is on the driver's disk only
NODE_FIX = ("put the data on a shared mount or in object storage (s3://, gs://), "
            "or ship it with runtime_env")


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


def absolute(path) -> str:
    """`path` with ~ expanded, made absolute against the driver's working directory: a data
    source is built on the driver and read on Ray workers, whose working directory is not
    the driver's (Ray Train and Tune run them in folders of their own)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def is_uri(path) -> bool:
    """Whether `path` names a filesystem by scheme (s3://, gs://, hdfs://, file://)."""
    return isinstance(path, (str, os.PathLike)) and "://" in os.fspath(path)


def location(path) -> str:
    """Where a source reads `path` on every node: a URI as given (without a trailing /), a
    local path made absolute on the driver (`absolute`)."""
    text = os.fspath(path)
    return text.rstrip("/") if is_uri(text) else absolute(text)


def remote_filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a URI, as results.py opens a storage path.
    pyarrow's S3FileSystem reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    and AWS_REGION itself (pyarrow.fs.S3FileSystem docs), so MinIO and on-prem stores need
    no setting here."""
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except ValueError as e:  # pyarrow.ArrowInvalid: an unknown scheme or a malformed URI
        raise ValueError(f"{uri} is not a URI pyarrow can open; give s3://bucket/key, gs://bucket/key "
                         "or a local path") from e


@dataclass(frozen=True)
class RemoteFile:
    """One object in storage, with what the sources use of a local file's pathlib.Path
    (suffix, stat, read_bytes, str), so the corpus code reads either the same way."""

    uri: str
    size: int  # bytes
    mtime_ns: int  # last modification, ns since the epoch (0 where the store reports none)

    def __str__(self) -> str:
        return self.uri

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.uri).suffix

    def stat(self):
        return SimpleNamespace(st_size=self.size, st_mtime_ns=self.mtime_ns)

    def read_bytes(self) -> bytes:
        fs, path = remote_filesystem(self.uri)
        with fs.open_input_stream(path) as f:
            return f.read()


def _remote_type(uri: str) -> str | None:
    """"file", "dir" (a prefix holding objects) or None (nothing there)."""
    from pyarrow.fs import FileType

    fs, path = remote_filesystem(uri)
    kind = fs.get_file_info(path).type
    return "file" if kind == FileType.File else "dir" if kind == FileType.Directory else None


def _path_type(path: str) -> str | None:
    """_remote_type for a URI or a local path alike."""
    if is_uri(path):
        return _remote_type(path)
    return "file" if os.path.isfile(path) else "dir" if os.path.isdir(path) else None


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if is_uri(base) else str(Path(base, name))


def remote_files(uri: str, what: str, suffixes=None, skip=frozenset()) -> list:
    """The objects at `uri`: itself if it is one, else every object under the prefix
    (recursive; pyarrow FileSelector), those under a folder in `skip` or starting with "."
    and, with `suffixes`, those of other suffixes left out. `what` names the path in the
    FileNotFoundError."""
    from pyarrow.fs import FileSelector, FileType

    fs, root = remote_filesystem(uri)
    info = fs.get_file_info(root)
    if info.type == FileType.File:
        return [RemoteFile(uri, info.size, info.mtime_ns or 0)]
    if info.type != FileType.Directory:
        raise FileNotFoundError(f"{what} {uri} does not exist; check the URI, and the credentials "
                                "(AWS_* / GOOGLE_APPLICATION_CREDENTIALS) of every node")
    out = []
    for i in fs.get_file_info(FileSelector(root, recursive=True)):
        parts = i.path[len(root):].strip("/").split("/")
        if i.type != FileType.File or any(d in skip or d.startswith(".") for d in parts[:-1]):
            continue
        if suffixes is None or PurePosixPath(parts[-1]).suffix in suffixes:
            out.append(RemoteFile(f"{uri}/{'/'.join(parts)}", i.size, i.mtime_ns or 0))
    return sorted(out, key=lambda f: f.uri)  # listing order is the store's: the cache key needs one order


def _cache_base(cache_dir) -> Path:
    return Path(cache_dir) if cache_dir else Path.home() / ".cache" / "flops_fit"


def _remote_key(files: list) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}\n".encode())
    for f in files:
        h.update(f"{f.uri}\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _copy_object(f: RemoteFile, dest: Path) -> None:
    """Copy one object to dest, atomically; an object that changed size meanwhile is an
    error, not a cache entry under the old object's key."""
    fs, path = remote_filesystem(f.uri)
    copied = 0

    def write(out):
        nonlocal copied
        with fs.open_input_stream(path) as src:
            while chunk := src.read(COPY_CHUNK):
                out.write(chunk)
                copied += len(chunk)
        if copied != f.size:
            raise OSError(f"{f.uri} changed while it was copied ({copied} of {f.size} bytes); run again")
    _atomic_write(dest, write)


def local_copy(uri: str, cache_dir=None, what: str = "file") -> Path:
    """This node's copy of the object at `uri`: cache_dir/remote/<hash of URI, size,
    mtime>-<name>, copied on first use. A changed object has a new key, so it is copied
    again, never read stale; several workers of one node may copy at once (each writes a
    temporary file, the last rename wins, every one complete)."""
    (f,) = remote_files(uri, what)
    dest = _cache_base(cache_dir) / REMOTE_CACHE / f"{_remote_key([f])}-{PurePosixPath(uri).name}"
    if dest.is_file() and dest.stat().st_size == f.size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _copy_object(f, dest)
    return dest


def local_folder(uri: str, cache_dir=None, what: str = "folder") -> Path:
    """This node's copy of every object under the prefix `uri` (local_copy for a folder):
    copied into a temporary folder that is renamed into place whole, so a folder in the
    cache is always complete; a worker that loses the race drops its copy."""
    files = remote_files(uri, what)
    dest = _cache_base(cache_dir) / REMOTE_CACHE / f"{PurePosixPath(uri).name}-{_remote_key(files)}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".", suffix=".tmp"))
    try:
        for f in files:
            target = tmp / f.uri[len(uri) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_object(f, target)
        try:
            os.rename(tmp, dest)
        except OSError:  # another worker of this node renamed its complete copy first
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def read_head(path: str, what: str) -> bytes:
    """The first HEAD_BYTES bytes of a local file or an object, read where this runs:
    FileNotFoundError naming the path and the fix when it is not there."""
    if is_uri(path):
        if _remote_type(path) != "file":
            raise FileNotFoundError(f"{what} {path} does not exist; check the URI, and the credentials "
                                    "(AWS_* / GOOGLE_APPLICATION_CREDENTIALS) of every node")
        fs, p = remote_filesystem(path)
        with fs.open_input_stream(p) as f:
            return f.read(HEAD_BYTES)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist on this node; {NODE_FIX}")
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def keep_settings(obj, **settings) -> None:
    """Store a data source's settings as its attributes. A source holds settings only, so it
    pickles small and each Ray worker builds the data itself when it calls the source."""
    for name, value in settings.items():
        setattr(obj, name, value)


class _WindowSource:
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


def _check_windows(call: str, seq_len, val_every=None, unit: str = "file") -> None:
    """The settings the token sources share, checked before any file is read."""
    checks.integer(seq_len, call, "seq_len", "tokens per sample (the window length)")
    if val_every is not None:
        checks.integer(val_every, call, "val_every", f"every val_every-th {unit} is validation", minimum=2)


def _check_splits(train: np.ndarray, val: np.ndarray, seq_len: int, what: str, fixes: tuple):
    for name, arr, fix in (("training", train, fixes[0]), ("validation", val, fixes[1])):
        if len(arr) < seq_len + 1:
            raise ValueError(
                f"{what}: the {name} split has {len(arr)} tokens, fewer than one sample of "
                f"seq_len + 1 = {seq_len + 1}; {fix}"
            )


def _atomic_write(path: Path, write) -> None:
    """write(file) into a temporary file beside path, then os.replace: several workers on one
    node may build the same cache at once, and a reader must never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _cache_folder(cache_dir, prefix: str, settings: str, files: list) -> Path:
    """cache_dir (default ~/.cache/flops_fit) / <prefix>-<hash of the settings and of every
    file's path, size and mtime>: a changed file means a new cache, never a stale one."""
    h = hashlib.sha256(f"v{CACHE_VERSION} {settings}\n".encode())
    for f in files:  # a pathlib.Path or a RemoteFile
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return _cache_base(cache_dir) / f"{prefix}-{h.hexdigest()[:16]}"


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
    _atomic_write(path, lambda f: f.write(tokens.astype(dt).tobytes()))
    return path


def _open_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
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


class TextCorpus(_WindowSource):
    """Byte-level corpus from text files, split into train / validation by file.

    paths: files and/or directories (walked recursively for TEXT_SUFFIXES), local or
    object-storage URIs (s3://bucket/prefix: every object under the prefix, listed
    recursively); None means the
    .py files of this Python's standard library, tests excluded. Every val_every-th file in
    sorted order goes to validation, so no document straddles the split. Tokens are cached
    as uint16 train.bin / val.bin in cache_dir (default ~/.cache/flops_fit/corpus-<hash of
    files, sizes, mtimes>), so a changed file means a new cache, never a stale one; objects
    are streamed into that cache, once per node, and not kept besides.
    """

    def __init__(self, paths=None, *, seq_len: int = 128, val_every: int = 10, cache_dir=None):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = None if paths is None else [location(p) for p in paths]
        _check_windows("TextCorpus", seq_len, val_every)
        self.seq_len = seq_len
        self.val_every = val_every
        self.cache_dir = None if cache_dir is None else absolute(cache_dir)
        self._vocab_size = BYTE_VOCAB

    def files(self) -> list:
        """The corpus's non-empty files, sorted: the order fixes the split and the hash."""
        if self.paths is None:
            root = Path(sysconfig.get_paths()["stdlib"])
            found = self._walk(root, {".py"}, SKIP_DIRS | STDLIB_TEST_DIRS)
        else:
            found = []
            for p in self.paths:
                if is_uri(p):
                    found += remote_files(p, "corpus path", TEXT_SUFFIXES, SKIP_DIRS)
                elif Path(p).is_dir():
                    found += self._walk(Path(p), TEXT_SUFFIXES, SKIP_DIRS)
                elif Path(p).is_file():
                    found.append(Path(p).resolve())
                else:
                    raise FileNotFoundError(f"corpus path {p} does not exist; {NODE_FIX}")
        # local files in pathlib's order (by path parts), then objects in the same order
        files = sorted({f for f in found if f.stat().st_size > 0},
                       key=lambda f: (1, tuple(f.uri.split("/"))) if isinstance(f, RemoteFile) else (0, f.parts))
        if not files:
            where = "the standard library" if self.paths is None else ", ".join(self.paths)
            raise ValueError(f"no non-empty text files found in {where}; "
                             f"directories are searched for {sorted(TEXT_SUFFIXES)}")
        return files

    @staticmethod
    def _walk(root: Path, suffixes, skip) -> list:
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".")]
            out += [Path(dirpath, f).resolve() for f in filenames if Path(f).suffix in suffixes]
        return out

    def _split(self, files: list) -> tuple:
        val = [f for i, f in enumerate(files) if (i + 1) % self.val_every == 0]
        train = [f for i, f in enumerate(files) if (i + 1) % self.val_every != 0]
        return train, val

    def check_readable(self) -> None:
        """Where this runs (a node of the cluster): list the corpus (a stat of every file or
        object) and read the first bytes of its first file; FileNotFoundError naming the
        path if any is missing. Builds no cache."""
        read_head(str(self.files()[0]), "corpus file")

    def _cache_path(self, files: list) -> Path:
        return _cache_folder(self.cache_dir, "corpus", f"sep={SEPARATOR} val_every={self.val_every}", files)

    def __call__(self) -> tuple:
        """Build (or reuse) the token cache; return (train, validation) TokenDatasets."""
        files = self.files()
        cache = self._cache_path(files)
        meta = cache / "meta.json"
        if not meta.is_file():  # written last, so its presence means both .bin files are complete
            cache.mkdir(parents=True, exist_ok=True)
            counts = {}
            for name, split in zip(("train", "val"), self._split(files)):
                counts[name] = {"files": len(split), "tokens": self._write_split(cache / f"{name}.bin", split)}
            _atomic_write(meta, lambda f: f.write(json.dumps(counts, indent=1).encode()))
        train, val = (np.memmap(cache / f"{n}.bin", dtype=np.uint16, mode="r")
                      if (cache / f"{n}.bin").stat().st_size else np.zeros(0, np.uint16)
                      for n in ("train", "val"))
        _check_splits(train, val, self.seq_len, f"text corpus of {len(files)} files",
                      ("add files", "add files or lower val_every"))
        return TokenDataset(train, self.seq_len), TokenDataset(val, self.seq_len)

    @staticmethod
    def _write_split(path: Path, files: list) -> int:
        n = 0
        sep = np.array([SEPARATOR], dtype="<u2")

        def write(out):
            nonlocal n
            for f in files:  # one file at a time: memory stays at the largest file
                tokens = np.frombuffer(f.read_bytes(), dtype=np.uint8).astype("<u2")
                out.write(tokens.tobytes())
                out.write(sep.tobytes())
                n += len(tokens) + 1
        _atomic_write(path, write)
        return n

    def describe(self) -> str:
        files = self.files()
        train, val = self._split(files)
        # byte-level: tokens = bytes + one separator per file, known without building
        tokens = [sum(f.stat().st_size for f in s) + len(s) for s in (train, val)]
        what = "Python standard library .py files" if self.paths is None else ", ".join(self.paths)
        return (f"TextCorpus({what}): {len(files)} files, byte-level (vocab {BYTE_VOCAB}), "
                f"train {len(train)} files / {tokens[0]:,} tokens, "
                f"validation every {self.val_every}th file: {len(val)} files / {tokens[1]:,} tokens, "
                f"seq_len {self.seq_len}")

    def __repr__(self) -> str:
        return settings_repr(self, paths=self.paths, seq_len=self.seq_len, val_every=self.val_every,
                             cache_dir=self.cache_dir)


class TokenFile(_WindowSource):
    """Pre-tokenized binary token files (nanoGPT layout: train.bin / val.bin, uint16 LE).

    train: a file, or a directory holding train.bin (and optionally val.bin); local, or an
    object-storage URI (s3://bucket/tokens/train.bin, or the prefix s3://bucket/tokens),
    copied once per node into cache_dir (default ~/.cache/flops_fit/remote) and memory-
    mapped from there. Without a validation file the last val_fraction of the training
    file is held out. The constructor only stats the files.
    """

    def __init__(self, train, val=None, *, seq_len: int = 128, dtype: str = "uint16",
                 vocab_size: int | None = None, val_fraction: float = 0.05, cache_dir=None):
        train = location(train)
        val = None if val is None else location(val)
        if _path_type(train) == "dir":
            if val is None and _path_type(_join(train, "val.bin")) == "file":
                val = _join(train, "val.bin")
            train = _join(train, "train.bin")
        if _path_type(train) != "file":
            raise FileNotFoundError(f"token file {train} does not exist")
        if val is not None and _path_type(val) != "file":
            raise FileNotFoundError(f"validation token file {val} does not exist")
        checks.fraction(val_fraction, "TokenFile", "val_fraction", "the held-out share of train", open_low=True,
                   open_high=True)
        _check_windows("TokenFile", seq_len)
        keep_settings(self, train=train, val=val, seq_len=seq_len,
                      dtype=np.dtype(dtype).newbyteorder("<").str,  # a string: pickles everywhere
                      val_fraction=val_fraction, cache_dir=None if cache_dir is None else absolute(cache_dir),
                      _vocab_size=vocab_size)  # None: the largest token id + 1, scanned when first asked

    def _scan_vocab(self) -> int:
        return max(int(a.max()) for a in self._arrays()) + 1

    def _local(self, path: str) -> Path:
        """The file to memory-map: the path itself, or this node's copy of an object."""
        return local_copy(path, self.cache_dir, "token file") if is_uri(path) else Path(path)

    def check_readable(self) -> None:
        """Where this runs (a node of the cluster): stat the token files and read their
        first bytes; FileNotFoundError naming the path if one is missing. Copies nothing."""
        for path in (self.train, self.val):
            if path is not None:
                read_head(path, "token file")

    def _arrays(self) -> tuple:
        tokens = _open_tokens(self._local(self.train), np.dtype(self.dtype))
        if self.val is not None:
            return tokens, _open_tokens(self._local(self.val), np.dtype(self.dtype))
        n_val = int(len(tokens) * self.val_fraction)
        return tokens[:len(tokens) - n_val], tokens[len(tokens) - n_val:]

    def __call__(self) -> tuple:
        train, val = self._arrays()
        fixes = ("use a larger token file", "use a larger validation file" if self.val else "raise val_fraction")
        _check_splits(train, val, self.seq_len, f"token file {self.train}", fixes)
        vocab = self.vocab_size
        return TokenDataset(train, self.seq_len, vocab), TokenDataset(val, self.seq_len, vocab)

    def describe(self) -> str:
        train, val = self._arrays()
        held = self.val if self.val else f"last {self.val_fraction:.0%} of {self.train}"
        vocab = self._vocab_size if self._vocab_size is not None else "not yet scanned"
        return (f"TokenFile({self.train}): {np.dtype(self.dtype).name}, vocab {vocab}, "
                f"train {len(train):,} tokens, validation {len(val):,} tokens ({held}), "
                f"seq_len {self.seq_len}")

    def __repr__(self) -> str:
        return settings_repr(self, train=self.train, val=self.val, seq_len=self.seq_len,
                             dtype=np.dtype(self.dtype).name, vocab_size=self._vocab_size,
                             val_fraction=self.val_fraction, cache_dir=self.cache_dir)


HF_MARKERS = ("dataset_dict.json", "state.json")  # what DatasetDict / Dataset.save_to_disk write


def is_token_folder(path) -> bool:
    """Whether `path` (a folder or a URI prefix) holds train.bin (nanoGPT's layout)."""
    return _path_type(_join(location(path), "train.bin")) == "file"


def is_hf_dataset(path) -> bool:
    """Whether `path` (a folder or a URI prefix) is what `Dataset.save_to_disk` /
    `DatasetDict.save_to_disk` wrote."""
    path = location(path)
    return any(_path_type(_join(path, marker)) == "file" for marker in HF_MARKERS)


def hf_dataset_folder(path, who: str) -> str:
    """`path` resolved (a URI kept as it is), or FileNotFoundError (naming `who`, the
    reader) if it is no folder (a URI: no saved dataset; only stats are made)."""
    path = location(path)
    if is_uri(path) and not is_hf_dataset(path):
        raise FileNotFoundError(f"{who}: {path} holds no {' or '.join(HF_MARKERS)}; give the prefix "
                                "that Dataset.save_to_disk or DatasetDict.save_to_disk wrote")
    if not is_uri(path) and not Path(path).is_dir():
        raise FileNotFoundError(f"{who}: {path} is not a folder; give the folder that "
                                "Dataset.save_to_disk or DatasetDict.save_to_disk wrote")
    return path


def load_hf_dataset(path: str, who: str, cache_dir=None):
    """`datasets.load_from_disk(path)`: a Dataset, or a DatasetDict (a dict of splits). A
    URI is copied once per node into cache_dir (local_folder) and loaded from there."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"{who} reads Hugging Face datasets: pip install datasets") from e
    if is_uri(path):
        path = str(local_folder(path, cache_dir, f"{who} dataset"))
    return datasets.load_from_disk(path)


class HFText(_WindowSource):
    """A Hugging Face `datasets` dataset on disk, read with `datasets.load_from_disk`
    (what `Dataset.save_to_disk` / `DatasetDict.save_to_disk` wrote): a local folder, or a
    prefix in object storage (s3://bucket/ds), copied once per node into cache_dir; nothing
    is downloaded from the Hugging Face hub.

    column: a column of strings (byte-level UTF-8 tokens, vocab 256, a separator after
    every row, exactly as TextCorpus treats files) or of token-id lists such as "input_ids"
    (concatenated as they are; vocab = largest id + 1 unless vocab_size is given).
    A DatasetDict gives its train_split and val_split; a single Dataset holds out every
    val_every-th row, so no row straddles the split. Tokens are cached as TextCorpus's are
    (cache_dir, default ~/.cache/flops_fit), keyed by the dataset files' names, sizes and
    modification times, so every worker on a node shares one memory-mapped copy.
    """

    def __init__(self, path, *, column: str = "text", seq_len: int = 128, train_split: str = "train",
                 val_split: str = "validation", val_every: int = 10, vocab_size: int | None = None,
                 cache_dir=None):
        path = hf_dataset_folder(path, "HFText")
        _check_windows("HFText", seq_len, val_every, unit="row")
        keep_settings(self, path=path, column=column, seq_len=seq_len, train_split=train_split,
                      val_split=val_split, val_every=val_every,
                      cache_dir=None if cache_dir is None else absolute(cache_dir),
                      _vocab_size=vocab_size)  # None: found from the column when first asked

    def _scan_vocab(self) -> int:
        """256 for a text column, else the largest token id + 1. Read from the dataset's Arrow
        columns (the schema for text, one max over the ids), so asking on the driver neither
        tokenizes the dataset nor writes the token cache."""
        import pyarrow as pa
        import pyarrow.compute as pc

        top = 0
        for split in self._splits():
            column = split.data.column(self.column)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                return BYTE_VOCAB
            while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                column = pc.list_flatten(column)
            if len(column):
                top = max(top, int(pc.max(column).as_py()))
        return top + 1

    def _splits(self) -> tuple:
        """(train, validation) `datasets.Dataset`s holding only `column`."""
        ds = load_hf_dataset(self.path, "HFText", self.cache_dir)
        if isinstance(ds, dict):  # a DatasetDict: its splits
            missing = [s for s in (self.train_split, self.val_split) if s not in ds]
            if missing:
                raise ValueError(f"HFText({self.path}) has splits {sorted(ds)}, not {missing}; "
                                 "set train_split= / val_split=")
            train, val = ds[self.train_split], ds[self.val_split]
        else:
            rows = np.arange(len(ds))
            held = (rows + 1) % self.val_every == 0
            train, val = ds.select(rows[~held]), ds.select(rows[held])
        if self.column not in train.column_names:
            raise ValueError(f"HFText({self.path}) has columns {train.column_names}, not {self.column!r}; "
                             "set column= to a text column or a token-id column")
        return train.select_columns([self.column]), val.select_columns([self.column])

    def check_readable(self) -> None:
        """Where this runs (a node of the cluster): stat the saved dataset's folder and read
        the first bytes of its dataset_dict.json / state.json; FileNotFoundError naming the
        path if it is missing. Copies nothing."""
        marker = next((m for m in HF_MARKERS if _path_type(_join(self.path, m)) == "file"), HF_MARKERS[0])
        read_head(_join(self.path, marker), "HFText dataset file")

    def _cache_path(self) -> Path:
        # the objects' listing keys a remote dataset: no copy is needed to find the cache
        files = (remote_files(self.path, "HFText dataset") if is_uri(self.path)
                 else sorted(p for p in Path(self.path).rglob("*") if p.is_file()))
        return _cache_folder(self.cache_dir, "hf", f"sep={SEPARATOR} column={self.column} splits="
                             f"{self.train_split},{self.val_split} val_every={self.val_every}", files)

    def _build(self) -> tuple:
        """Write (or reuse) the token cache; return its folder and its meta (dtype,
        vocab_size, token counts)."""
        cache = self._cache_path()
        meta_path = cache / "meta.json"
        if meta_path.is_file():  # written last: both .bin files are complete
            return cache, json.loads(meta_path.read_text())
        cache.mkdir(parents=True, exist_ok=True)
        splits = dict(zip(("train", "val"), self._splits()))
        parts = {name: list(self._tokens(ds)) for name, ds in splits.items()}
        is_text = any(text for chunks in parts.values() for text, _ in chunks)
        arrays = {name: np.concatenate([t for _, t in chunks]) if chunks else np.zeros(0, np.int64)
                  for name, chunks in parts.items()}
        top = max((int(a.max()) for a in arrays.values() if a.size), default=0)
        vocab = BYTE_VOCAB if is_text else top + 1
        dtype = "uint16" if top <= np.iinfo(np.uint16).max else "uint32"
        for name, tokens in arrays.items():
            write_token_file(cache / f"{name}.bin", tokens, dtype)
        meta = {"dtype": dtype, "vocab_size": vocab, "tokens": {n: int(a.size) for n, a in arrays.items()}}
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        return cache, meta

    def _tokens(self, ds):
        """Yield (is_text, token array) per batch of rows of `column`."""
        sep = np.array([SEPARATOR], dtype=np.int64)
        for batch in ds.iter(batch_size=1000):
            rows = batch[self.column]
            if rows and isinstance(rows[0], str):
                yield True, np.concatenate([np.concatenate([np.frombuffer(r.encode(), np.uint8).astype(np.int64), sep])
                                            for r in rows])
            elif rows:
                try:
                    ids = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]
                except (TypeError, ValueError) as e:
                    raise ValueError(f"HFText({self.path}): column {self.column!r} holds {type(rows[0]).__name__}, "
                                     "neither strings nor lists of token ids; set column=") from e
                yield False, np.concatenate(ids)

    def __call__(self) -> tuple:
        """Build (or reuse) the token cache; return (train, validation) TokenDatasets."""
        cache, meta = self._build()
        train, val = (_open_tokens(cache / f"{n}.bin", np.dtype(meta["dtype"]))
                      if meta["tokens"][n] else np.zeros(0, meta["dtype"]) for n in ("train", "val"))
        _check_splits(train, val, self.seq_len, f"HFText({self.path}, column={self.column!r})",
                      ("add rows", "add validation rows or lower val_every"))
        vocab = self._vocab_size or meta["vocab_size"]
        return TokenDataset(train, self.seq_len, vocab), TokenDataset(val, self.seq_len, vocab)

    def describe(self) -> str:
        meta = self._build()[1]
        return (f"HFText({self.path}, column {self.column!r}): vocab {self._vocab_size or meta['vocab_size']}, "
                f"train {meta['tokens']['train']:,} tokens, validation {meta['tokens']['val']:,} tokens, "
                f"seq_len {self.seq_len}")

    def __repr__(self) -> str:
        return settings_repr(self, self.path, column=self.column, seq_len=self.seq_len,
                             train_split=self.train_split, val_split=self.val_split, val_every=self.val_every,
                             vocab_size=self._vocab_size, cache_dir=self.cache_dir)
