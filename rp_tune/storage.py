"""Where sweeps keep their files: a local folder or a URI (s3://, gs://, file://, ...).

On one machine, results live in a folder. On a cluster they must be where every node can
reach them: a shared mount (NFS at the same path on every node) or object storage. Ray itself
reads and writes `storage_path` through pyarrow filesystems; the few files rp_tune writes
beside Ray's (summary.json, pending MLflow events, fault markers) go through the same
pyarrow filesystems here, so a URI works wherever a path does.
"""

from __future__ import annotations

import posixpath
from pathlib import Path


def is_uri(location: str) -> bool:
    """True for `scheme://...` (s3, gs, file, ...), False for a plain local path."""
    return "://" in location


def resolve(location: str) -> str:
    """An absolute local path, or the URI unchanged: Ray refuses relative storage paths."""
    if is_uri(location):
        return location.rstrip("/")
    return str(Path(location).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    """`location/part/...` for a path or a URI."""
    if is_uri(location):
        return posixpath.join(location, *parts)
    return str(Path(location, *parts))


def _fs(location: str):
    import pyarrow.fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def exists(location: str) -> bool:
    """Whether a file or folder is at `location`."""
    import pyarrow.fs as pafs

    fs, path = _fs(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(location: str) -> str:
    fs, path = _fs(location)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(location: str, text: str) -> None:
    """Write (replace) a small text file, creating its folder."""
    fs, path = _fs(location)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def append_text(location: str, text: str) -> None:
    """Append to a text file; object stores cannot append, so read, extend and rewrite."""
    write_text(location, (read_text(location) if exists(location) else "") + text)


def delete(location: str) -> None:
    fs, path = _fs(location)
    fs.delete_file(path)


def list_names(location: str) -> list[str]:
    """Names of the entries directly inside a folder (empty if it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = _fs(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def copy_to_local(source: str, dest: str | Path) -> None:
    """Copy a file or a whole folder (path or URI) to a local path."""
    import pyarrow.fs as pafs

    fs, path = _fs(source)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        Path(dest).mkdir(parents=True, exist_ok=True)
    else:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
