"""Where sweeps keep their files: a local folder or a URI (s3://, gs://, file://, ...).

On one machine, results live in a folder. On a cluster they must be where every node can
reach them: a shared mount (NFS at the same path on every node) or object storage. Ray itself
reads and writes `storage_path` through pyarrow filesystems; the few files rp_tune writes
beside Ray's (summary.json, pending MLflow events, fault markers) go through the same
pyarrow filesystems here, so a URI works wherever a path does.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)


def is_uri(location: str) -> bool:
    """True for `scheme://...` (s3, gs, file, ...), False for a plain local path."""
    return "://" in location


def resolve(location: str) -> str:
    """An absolute local path, or the URI unchanged: Ray refuses relative storage paths."""
    if is_uri(location):
        u = urlsplit(location)
        return urlunsplit(u._replace(path=u.path.rstrip("/")))
    return str(Path(location).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    """`location/part/...` for a path or a URI; a URI's query (e.g. an S3-compatible
    server's `?endpoint_override=host:port&scheme=http`) stays at the end."""
    if is_uri(location):
        u = urlsplit(location)
        return urlunsplit(u._replace(path=posixpath.join(u.path or "/", *parts)))
    return str(Path(location, *parts))


def basename(location: str) -> str:
    """The last part of a path or of a URI's path (its query left out)."""
    path = urlsplit(location).path if is_uri(location) else location
    return posixpath.basename(path.rstrip("/"))


def parent(location: str) -> str:
    """The folder above a path or a URI's path (its query kept)."""
    if is_uri(location):
        u = urlsplit(location)
        return urlunsplit(u._replace(path=posixpath.dirname(u.path.rstrip("/")) or "/"))
    return str(Path(location).parent)


def on_storage_of(fs_path: str, like: str) -> str:
    """A path as Ray's pyarrow filesystem gives it (on S3 `bucket/key`, no scheme), as a
    location on the same storage as `like` (a path, or a URI whose scheme and query, e.g.
    an endpoint override, it takes)."""
    if not is_uri(like) or is_uri(fs_path) or urlsplit(like).scheme == "file":
        return fs_path
    u = urlsplit(like)
    bucket, _, key = fs_path.lstrip("/").partition("/")
    return urlunsplit((u.scheme, bucket, "/" + key, u.query, ""))


def _fs(location: str):
    import pyarrow.fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


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


def check_usable(location: str) -> None:
    """Raise OSError (with the reason) unless a sweep can write under a local `location`.

    Probes for real, leaving nothing behind: creates the missing folders, writes and deletes
    a file, then removes the folders it created. URIs are checked by the first read (Ray's
    `Tuner.can_restore`), which names the bucket or credential problem.
    """
    import tempfile

    if is_uri(location):
        return
    path = Path(location).expanduser().resolve()
    first_missing = None
    probe = path
    while not probe.exists():
        first_missing, probe = probe, probe.parent
    if not probe.is_dir():
        raise OSError(f"{probe} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".rp_tune-probe-", dir=path)
        os.close(fd)
        os.unlink(name)
    finally:
        if first_missing is not None:  # only the folders made here, and only while empty
            made = [path, *path.parents]
            for folder in made[: made.index(first_missing) + 1]:
                try:
                    folder.rmdir()
                except OSError:
                    break


class LockHeld(RuntimeError):
    """Another live driver holds a sweep's storage; the message says who."""


class DriverLock:
    """One driver per sweep: a lease file beside the sweep, on a path or a URI.

    The lease names its holder (host, pid, start) and carries a heartbeat that a background
    thread renews every `beat_s`. Another driver is refused while the lease is live; a lease
    is dead (and taken over) once its heartbeat is older than `ttl_s`, or at once when its
    holder ran on this host and its process is gone, so a crashed driver never leaves the
    sweep stuck. Object stores have no create-if-absent, so a writer waits `settle_s` and
    reads the lease back: of two drivers racing, only the one whose lease is there goes on.
    """

    def __init__(
        self,
        location: str,
        what: str = "the sweep",
        *,
        ttl_s: float = 60.0,
        beat_s: float = 10.0,
        settle_s: float = 1.0,
    ) -> None:
        import socket
        import uuid

        self.location, self.what = location, what
        self.ttl_s, self.beat_s, self.settle_s = ttl_s, beat_s, settle_s
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.host, self.pid, self.token = socket.gethostname(), os.getpid(), uuid.uuid4().hex
        self.extra: dict = {}  # what the holder wants a successor to know (its Ray session)
        self.previous: dict | None = None  # the dead lease this driver took over, if any
        self._stop = None
        self._thread = None

    def holder(self) -> dict | None:
        """The lease as stored, or None where there is none.

        A lease that exists but does not parse (a writer killed mid-write on a store without
        atomic replace) counts as held, with its modification time as heartbeat, so it dies
        after `ttl_s`. A read that fails (a throttled or unreachable store) raises OSError:
        an unknown holder is never taken for none.
        """
        import json

        import pyarrow.fs as pafs

        fs, path = _fs(self.location)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None
        text = read_text(self.location)
        try:
            lease = json.loads(text)
            if isinstance(lease, dict):
                return lease
        except ValueError:
            pass
        mtime = info.mtime.timestamp() if info.mtime is not None else time.time()
        return {"host": "?", "pid": "?", "started": "?", "heartbeat": mtime, "token": "?"}

    def _alive(self, lease: dict) -> bool:
        if lease.get("host") == self.host:  # here the process itself says: alive or gone
            try:
                os.kill(int(lease.get("pid", -1)), 0)
                return True
            except ProcessLookupError:
                return False
            except (PermissionError, ValueError, OverflowError):
                pass
        # elsewhere only the heartbeat can; a stopped clock or skew costs at most one ttl more
        return time.time() - float(lease.get("heartbeat", 0)) <= self.ttl_s

    def describe(self, lease: dict) -> str:
        age = time.time() - float(lease.get("heartbeat", 0))
        return (
            f"{self.what} is held by another driver: pid "
            f"{lease.get('pid')} on {lease.get('host')}, started {lease.get('started')}, alive "
            f"{age:.0f} s ago; wait for it to end or stop it (a driver that crashed frees the "
            f"sweep at once on its own host, elsewhere after {self.ttl_s:.0f} s)"
        )

    def _lease(self) -> str:
        import json

        return json.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "token": self.token,
                "started": self.started,
                "heartbeat": time.time(),
                **self.extra,
            }
        )

    def update(self, **extra: str) -> None:
        """Record more about this holder in the lease (e.g. its local Ray session)."""
        self.extra.update(extra)
        self._write()

    def _write(self) -> None:
        """Replace the lease whole: a temp file renamed on a path (a reader never sees half
        of it); one PUT on an object store, which is atomic there."""
        if is_uri(self.location):
            write_text(self.location, self._lease())
            return
        path = Path(self.location).expanduser()
        tmp = path.with_name(f"{path.name}.{self.token}.tmp")
        tmp.write_text(self._lease())
        os.replace(tmp, path)

    def check(self) -> dict | None:
        """Raise LockHeld if a live driver holds the lease; else the dead lease, or None."""
        current = self.holder()
        if current is not None and self._alive(current):
            raise LockHeld(self.describe(current))
        return current

    def acquire(self) -> None:
        """Take the lease or raise LockHeld naming its live holder."""
        import threading

        current = self.check()
        self.previous = current
        if not is_uri(self.location) and current is None:
            path = Path(self.location).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise LockHeld(self.describe(self.holder() or {})) from None
            with os.fdopen(fd, "w") as f:
                f.write(self._lease())
        else:  # a dead lease to take over, or an object store: write, settle, read back
            self._write()
            time.sleep(self.settle_s)
            again = self.holder()
            if again is None or again.get("token") != self.token:
                raise LockHeld(self.describe(again or {}))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="rp_tune-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                current = self.holder()
                if current is not None and current.get("token") != self.token:
                    log.error("the sweep's lock was taken over by another driver: %s", current)
                    return
                if not self._stop.is_set():  # never write again once release() began
                    self._write()
            except Exception as e:  # storage briefly unreachable: try again next beat
                log.warning("cannot renew the sweep's lock %s: %s", self.location, e)

    def release(self) -> None:
        """Stop renewing and remove the lease, if it is still ours."""
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._stop = None
        try:
            current = self.holder()
            if current is not None and current.get("token") == self.token:
                delete(self.location)
        except OSError as e:  # unreachable now: the lease dies by its heartbeat instead
            log.warning("cannot remove the sweep's lock %s: %s", self.location, e)
