"""Files on local disk, a shared mount or object storage, read and written one way.

A path with a scheme (s3://bucket/key, gs://bucket/key, file:///abs) is a URI, opened
through pyarrow's filesystems; anything else is a local path. pyarrow's S3 client takes the
endpoint and keys from the standard AWS variables (AWS_ENDPOINT_URL for MinIO or an
on-prem store, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION;
pyarrow.fs.S3FileSystem docs), so no setting is needed here. This is the one module that
tells the two apart: everything else asks `is_uri` or uses the functions below.

- Sweep records (`write_text`, `Folder`): a local file is replaced atomically and durably
  (temporary file, fsync, rename, fsync of the folder); an object is replaced whole by
  one PUT, which object stores make atomic.
- Data (`remote_files`, `local_copy`, `local_folder`, `read_head`): objects are copied
  once per node into a cache folder (default ~/.cache/flops_fit/remote), keyed by the
  URI, size and modification time, so nodes that share no disk read the same data.
Never imports ray or torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

SCHEME = "://"  # what makes a path a URI
# A new record gets the mode a plain open() gives (0o666 less the umask), not
# NamedTemporaryFile's 0o600, so teammates on shared storage can read it.
PLAIN_FILE_MODE = 0o666
CACHE_VERSION = 1  # bump when the layout of copies in the cache changes
COPY_CHUNK = 8 << 20  # bytes per read when copying an object to the node's cache
HEAD_BYTES = 64  # read_head reads this many bytes of a file: enough to prove access
REMOTE_CACHE = "remote"  # cache_dir/<this>: node-local copies of objects and folders
# on every node: a local path that is not there means the data is on the driver's disk only
NODE_FIX = ("put the data on a shared mount or in object storage (s3://, gs://), "
            "or ship it with runtime_env")
URI_FIX = "check the URI, and the credentials (AWS_* / GOOGLE_APPLICATION_CREDENTIALS) of every node"


# --- paths ------------------------------------------------------------------------------


def is_uri(path) -> bool:
    """Whether `path` names a filesystem by scheme (s3://, gs://, hdfs://, file://)."""
    return isinstance(path, (str, os.PathLike)) and SCHEME in os.fspath(path)


def mentions_uri(text: str) -> bool:
    """Whether a message names a URI (and so the store's own fix, URI_FIX)."""
    return SCHEME in text


def absolute(path) -> str:
    """`path` with ~ expanded, made absolute against the driver's working directory: a data
    source is built on the driver and read on Ray workers, whose working directory is not
    the driver's (Ray Train and Tune run them in folders of their own)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def location(path) -> str:
    """Where a source reads `path` on every node: a URI as given (without a trailing /), a
    local path made absolute on the driver (`absolute`)."""
    text = os.fspath(path)
    return text.rstrip("/") if is_uri(text) else absolute(text)


def resolved(path) -> str:
    """A URI as given; a local path with ~ expanded and symlinks resolved (a sweep folder's
    name, the same from every working directory)."""
    text = os.fspath(path)
    return text if is_uri(text) else str(Path(text).expanduser().resolve())


def join(base, *parts: str) -> str:
    """`base`/`parts`: a URI joined with '/', a local path as pathlib joins it."""
    base = os.fspath(base)
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def suffix(path) -> str:
    """The extension of the last part of a local path or a URI ('.csv'; '' for none)."""
    return PurePosixPath(os.fspath(path).split(SCHEME)[-1]).suffix


def filesystem(path):
    """(pyarrow filesystem, path on it) for a local path (`resolved`) or a URI; ValueError
    naming the fix for a URI pyarrow cannot open."""
    from pyarrow import fs as pafs

    path = os.fspath(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), resolved(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except ValueError as e:  # pyarrow.ArrowInvalid: an unknown scheme or a malformed URI
        raise ValueError(f"{path} is not a URI pyarrow can open; give s3://bucket/key, gs://bucket/key "
                         "or a local path") from e


def _kind(info) -> str | None:
    from pyarrow.fs import FileType

    return "file" if info.type == FileType.File else "dir" if info.type == FileType.Directory else None


# --- a folder, its filesystem opened once ---------------------------------------------------


class Folder:
    """A local folder or a URI prefix, its pyarrow filesystem opened once (an object store's
    client is made, and its region looked up, once, not per file). Names below it are
    '/'-separated ("finished/C1e+10-s1.json"); "" is the folder itself."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.fs, self.root = filesystem(self.path)

    def uri(self, name: str = "") -> str:
        """Where `name` is, spelled as the folder was given (a URI or a local path)."""
        return join(self.path, *name.split("/")) if name else self.path

    def at(self, name: str = "") -> str:
        """`name`'s path on the filesystem."""
        return f"{self.root.rstrip('/')}/{name}" if name else self.root

    def kind(self, name: str = "") -> str | None:
        """"file", "dir" (a prefix holding objects) or None (nothing there)."""
        return _kind(self.fs.get_file_info(self.at(name)))

    def read_bytes(self, name: str = "") -> bytes | None:
        """The file's bytes; None when it is not there."""
        path = self.at(name)
        if self.fs.get_file_info(path).type.name == "NotFound":
            return None
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:  # deleted between the two calls
            return None

    def read_text(self, name: str = "") -> str | None:
        """The file as text (undecodable bytes replaced); None when it is not there."""
        raw = self.read_bytes(name)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def children(self, name: str = "") -> list:
        """(name, kind) of every entry directly in the folder `name`; [] when it is not there."""
        from pyarrow.fs import FileSelector

        if self.kind(name) != "dir":
            return []
        return [(info.path.rstrip("/").rsplit("/", 1)[-1], _kind(info))
                for info in self.fs.get_file_info(FileSelector(self.at(name)))]

    def make(self) -> None:
        """Create the folder and its parents (object stores need none; file:// does)."""
        self.fs.create_dir(self.root, recursive=True)

    def put(self, name: str, data: bytes) -> None:
        """Replace one object whole (one PUT); no folders made, no temporary file."""
        with self.fs.open_output_stream(self.at(name)) as f:
            f.write(data)

    def delete(self, name: str) -> None:
        self.fs.delete_file(self.at(name))

    def write_text(self, name: str, text: str) -> None:
        """Replace the file `name` with `text` atomically (`write_bytes`)."""
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace the file `name` atomically: a local file through a temporary file, fsync
        and rename (`write_durably`); an object by one PUT. Its folders are made first."""
        if not is_uri(self.path):
            write_durably(Path(self.at(name)), data)
            return
        # Object stores have no folders, but file:// and mounted filesystems need them.
        self.fs.create_dir(self.at(name).rsplit("/", 1)[0], recursive=True)
        self.put(name, data)  # object stores replace whole objects atomically


def read_text(path) -> str | None:
    """The text of the file at a local path or URI; None when it is not there."""
    return Folder(path).read_text()


def write_text(path, text: str) -> None:
    """Replace the file at a local path or URI with `text`, atomically (Folder.write_bytes)."""
    Folder(path).write_text("", text)


def write_bytes(path, data: bytes) -> None:
    """Replace the file at a local path or URI with `data`, atomically (Folder.write_bytes)."""
    Folder(path).write_bytes("", data)


def path_type(path) -> str | None:
    """"file", "dir" (a folder, or a prefix holding objects) or None for a local path or URI."""
    if is_uri(path):
        return Folder(path).kind()
    return "file" if os.path.isfile(path) else "dir" if os.path.isdir(path) else None


# --- local files written whole -------------------------------------------------------------


def write_durably(path: Path, data: bytes) -> None:
    """Replace the local file `path` with `data`: a temporary file beside it, fsync, rename,
    fsync of the folder. A reader sees the old file or the new one; a crash right after
    leaves the new one on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        tmp = f.name
        try:
            f.write(data)
            f.flush()
            # On disk before it replaces the old file: a crash (power, kernel) right after
            # the rename must not leave an empty or partial file in its place.
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            os.unlink(tmp)  # a failed write leaves no temporary file behind
            raise
    try:
        # NamedTemporaryFile creates the file 0600 and os.replace keeps that mode
        os.chmod(tmp, PLAIN_FILE_MODE & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX: the directory entry is data of the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL where the filesystem does not sync folders: nothing to do
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask."""
    # Linux reports the umask without changing it; elsewhere os.umask can only be read by
    # setting it, which is set straight back.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def replace_atomically(path: Path, write) -> None:
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


# --- objects copied to the node -------------------------------------------------------------


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
        fs, path = filesystem(self.uri)
        with fs.open_input_stream(path) as f:
            return f.read()


def remote_files(uri: str, what: str, suffixes=None, skip=frozenset()) -> list:
    """The objects at `uri`: itself if it is one, else every object under the prefix
    (recursive; pyarrow FileSelector), those under a folder in `skip` or starting with "."
    and, with `suffixes`, those of other suffixes left out. `what` names the path in the
    FileNotFoundError."""
    from pyarrow.fs import FileSelector, FileType

    fs, root = filesystem(uri)
    info = fs.get_file_info(root)
    if info.type == FileType.File:
        return [RemoteFile(uri, info.size, info.mtime_ns or 0)]
    if info.type != FileType.Directory:
        raise FileNotFoundError(f"{what} {uri} does not exist; {URI_FIX}")
    out = []
    for i in fs.get_file_info(FileSelector(root, recursive=True)):
        parts = i.path[len(root):].strip("/").split("/")
        if i.type != FileType.File or any(d in skip or d.startswith(".") for d in parts[:-1]):
            continue
        if suffixes is None or PurePosixPath(parts[-1]).suffix in suffixes:
            out.append(RemoteFile(f"{uri}/{'/'.join(parts)}", i.size, i.mtime_ns or 0))
    return sorted(out, key=lambda f: f.uri)  # listing order is the store's: the cache key needs one order


def cache_base(cache_dir) -> Path:
    """The cache folder: cache_dir, default ~/.cache/flops_fit."""
    return Path(cache_dir) if cache_dir else Path.home() / ".cache" / "flops_fit"


def _remote_key(files: list) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}\n".encode())
    for f in files:
        h.update(f"{f.uri}\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _copy_object(f: RemoteFile, dest: Path) -> None:
    """Copy one object to dest, atomically; an object that changed size meanwhile is an
    error, not a cache entry under the old object's key."""
    fs, path = filesystem(f.uri)
    copied = 0

    def write(out):
        nonlocal copied
        with fs.open_input_stream(path) as src:
            while chunk := src.read(COPY_CHUNK):
                out.write(chunk)
                copied += len(chunk)
        if copied != f.size:
            raise OSError(f"{f.uri} changed while it was copied ({copied} of {f.size} bytes); run again")
    replace_atomically(dest, write)


def local_copy(uri: str, cache_dir=None, what: str = "file") -> Path:
    """This node's copy of the object at `uri`: cache_dir/remote/<hash of URI, size,
    mtime>-<name>, copied on first use. A changed object has a new key, so it is copied
    again, never read stale; several workers of one node may copy at once (each writes a
    temporary file, the last rename wins, every one complete)."""
    (f,) = remote_files(uri, what)
    dest = cache_base(cache_dir) / REMOTE_CACHE / f"{_remote_key([f])}-{PurePosixPath(uri).name}"
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
    dest = cache_base(cache_dir) / REMOTE_CACHE / f"{PurePosixPath(uri).name}-{_remote_key(files)}"
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
        folder = Folder(path)
        if folder.kind() != "file":
            raise FileNotFoundError(f"{what} {path} does not exist; {URI_FIX}")
        with folder.fs.open_input_stream(folder.root) as f:
            return f.read(HEAD_BYTES)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist on this node; {NODE_FIX}")
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)
