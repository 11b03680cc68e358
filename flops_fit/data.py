"""Token sources on local disk, a shared mount or object storage (s3://, gs://).

TextCorpus and TokenFile are picklable factories: they hold paths and settings only, and
calling one (on each Ray worker) returns (train, validation) TokenDatasets backed by
memory-mapped token files, so every worker on a node shares one copy in the page cache.
A path with a scheme (s3://bucket/key, gs://...) is read through pyarrow's filesystems
(flops_fit/storage.py, endpoint and keys from the standard AWS variables); each node
copies what it reads once into its cache folder (default ~/.cache/flops_fit), keyed by the
URI, size and modification time, so nodes that share no disk read the same data. A local
path is made absolute on the driver and must exist on every node (a shared mount). Token
windows and token caches: flops_fit/tokens.py.

- TextCorpus: byte-level tokens (vocab 256) from text files; by default the .py files of
  the running Python's standard library (~12 MB on CPython 3.11), which every install has.
- TokenFile: pre-tokenized train.bin / val.bin in nanoGPT's layout (uint16 little-endian).
- HFText: a Hugging Face `datasets` dataset saved on local disk (`save_to_disk`), either a
  text column (byte-level, like TextCorpus) or a pre-tokenized column such as input_ids.
"""

import json
import os
import sysconfig
from pathlib import Path

import numpy as np

from . import checks
from .storage import (NODE_FIX, RemoteFile, absolute, is_uri, join, local_copy, local_folder, location,
                      path_type, read_head, remote_files, replace_atomically)
from .tokens import (BYTE_VOCAB, SEPARATOR, TokenDataset, WindowSource, cache_folder, check_splits,
                     check_windows, keep_settings, open_tokens, settings_repr, write_token_file)

# directories are walked for these; files named explicitly are taken whatever their extension
TEXT_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".py", ".tex", ".org", ".c", ".h", ".cpp", ".hpp", ".rs", ".go",
    ".java", ".js", ".ts", ".html", ".css", ".json", ".yaml", ".yml", ".toml", ".cfg", ".ini",
    ".csv", ".sh", ".xml",
})
SKIP_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages", "node_modules"})
STDLIB_TEST_DIRS = frozenset({"test", "tests", "idle_test"})  # test suites: repetitive fixtures


class TextCorpus(WindowSource):
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
        check_windows("TextCorpus", seq_len, val_every)
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
        return cache_folder(self.cache_dir, "corpus", f"sep={SEPARATOR} val_every={self.val_every}", files)

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
            replace_atomically(meta, lambda f: f.write(json.dumps(counts, indent=1).encode()))
        train, val = (np.memmap(cache / f"{n}.bin", dtype=np.uint16, mode="r")
                      if (cache / f"{n}.bin").stat().st_size else np.zeros(0, np.uint16)
                      for n in ("train", "val"))
        check_splits(train, val, self.seq_len, f"text corpus of {len(files)} files",
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
        replace_atomically(path, write)
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


class TokenFile(WindowSource):
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
        if path_type(train) == "dir":
            if val is None and path_type(join(train, "val.bin")) == "file":
                val = join(train, "val.bin")
            train = join(train, "train.bin")
        if path_type(train) != "file":
            raise FileNotFoundError(f"token file {train} does not exist")
        if val is not None and path_type(val) != "file":
            raise FileNotFoundError(f"validation token file {val} does not exist")
        checks.fraction(val_fraction, "TokenFile", "val_fraction", "the held-out share of train", open_low=True,
                   open_high=True)
        check_windows("TokenFile", seq_len)
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
        tokens = open_tokens(self._local(self.train), np.dtype(self.dtype))
        if self.val is not None:
            return tokens, open_tokens(self._local(self.val), np.dtype(self.dtype))
        n_val = int(len(tokens) * self.val_fraction)
        return tokens[:len(tokens) - n_val], tokens[len(tokens) - n_val:]

    def __call__(self) -> tuple:
        train, val = self._arrays()
        fixes = ("use a larger token file", "use a larger validation file" if self.val else "raise val_fraction")
        check_splits(train, val, self.seq_len, f"token file {self.train}", fixes)
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
    return path_type(join(location(path), "train.bin")) == "file"


def is_hf_dataset(path) -> bool:
    """Whether `path` (a folder or a URI prefix) is what `Dataset.save_to_disk` /
    `DatasetDict.save_to_disk` wrote."""
    path = location(path)
    return any(path_type(join(path, marker)) == "file" for marker in HF_MARKERS)


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


class HFText(WindowSource):
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
        check_windows("HFText", seq_len, val_every, unit="row")
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
        marker = next((m for m in HF_MARKERS if path_type(join(self.path, m)) == "file"), HF_MARKERS[0])
        read_head(join(self.path, marker), "HFText dataset file")

    def _cache_path(self) -> Path:
        # the objects' listing keys a remote dataset: no copy is needed to find the cache
        files = (remote_files(self.path, "HFText dataset") if is_uri(self.path)
                 else sorted(p for p in Path(self.path).rglob("*") if p.is_file()))
        return cache_folder(self.cache_dir, "hf", f"sep={SEPARATOR} column={self.column} splits="
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
        replace_atomically(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
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
        train, val = (open_tokens(cache / f"{n}.bin", np.dtype(meta["dtype"]))
                      if meta["tokens"][n] else np.zeros(0, meta["dtype"]) for n in ("train", "val"))
        check_splits(train, val, self.seq_len, f"HFText({self.path}, column={self.column!r})",
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
