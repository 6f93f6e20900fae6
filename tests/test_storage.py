"""The sweep's storage on a path or a URI (file://, s3:// on a loopback S3 server), data read
through URIs, and one driver per sweep: the lease file beside the sweep's storage."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rp_tune.core import storage
from rp_tune.core.storage import DriverLock, LockHeld
from rp_tune.planning.space import expand_space
from tests.helpers import ROOT


def _lease(path, **over):
    lease = {"host": socket.gethostname(), "pid": os.getpid(), "token": "other",
             "started": "then", "heartbeat": time.time(), **over}  # fmt: skip
    storage.write_text(str(path), json.dumps(lease))


def test_a_second_driver_is_refused_with_who_holds_the_sweep(tmp_path):
    first = DriverLock(str(tmp_path / ".s.driver.json"), "the sweep at X", beat_s=0.05)
    first.acquire()
    try:
        with pytest.raises(LockHeld) as e:
            DriverLock(str(tmp_path / ".s.driver.json")).acquire()
        who = f"held by another driver: pid {os.getpid()} on {socket.gethostname()}"
        assert who in str(e.value)
        beat = json.loads((tmp_path / ".s.driver.json").read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / ".s.driver.json").read_text())["heartbeat"] > beat
    finally:
        first.release()
    assert not (tmp_path / ".s.driver.json").exists()
    second = DriverLock(str(tmp_path / ".s.driver.json"))
    second.acquire()
    second.release()


def test_a_crashed_drivers_lease_does_not_leave_the_sweep_stuck(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    lock_file = tmp_path / ".s.driver.json"
    _lease(lock_file, pid=int(dead))  # this host, process gone: free at once
    lock = DriverLock(str(lock_file), settle_s=0)
    lock.acquire()
    assert json.loads(lock_file.read_text())["token"] == lock.token
    lock.release()
    _lease(lock_file, host="elsewhere", pid=1)  # another host, alive 0 s ago: refused
    with pytest.raises(LockHeld, match="on elsewhere"):
        DriverLock(str(lock_file), settle_s=0).acquire()
    _lease(lock_file, host="elsewhere", pid=1, heartbeat=time.time() - 120)  # silent 120 s
    lock = DriverLock(str(lock_file), ttl_s=60, settle_s=0)
    lock.acquire()
    lock.release()


def test_on_object_storage_of_two_racing_drivers_only_one_goes_on(tmp_path, monkeypatch):
    """No create-if-absent on object stores: write, settle, read back."""
    uri = (tmp_path / "bucket" / ".s.driver.json").as_uri()
    lock = DriverLock(uri, settle_s=0.01)

    def racer_writes(_):
        _lease(tmp_path / "bucket" / ".s.driver.json", host="other-node", token="racer")

    monkeypatch.setattr(time, "sleep", racer_writes)
    with pytest.raises(LockHeld, match="on other-node"):
        lock.acquire()
    monkeypatch.undo()
    storage.delete(uri)
    ok = DriverLock(uri, settle_s=0.01)
    ok.acquire()
    assert json.loads(storage.read_text(uri))["token"] == ok.token
    ok.release()
    assert not storage.exists(uri)


def test_a_killed_drivers_ray_processes_are_stopped_by_its_successor(tmp_path):
    """Processes of the dead driver's Ray session (named in their command lines) and their
    children are stopped; other processes are left alone."""
    from rp_tune.adapters.ray.cluster import stop_ray_session

    session = f"/tmp/ray/session_2026-01-01_00-00-00_000000_{os.getpid()}"
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"  # noqa: E501
    agent = subprocess.Popen([sys.executable, "-c", code, f"--session_dir={session}"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import psutil

        deadline = time.time() + 30
        while not psutil.Process(agent.pid).children() and time.time() < deadline:
            time.sleep(0.1)  # the agent starts its child
        assert stop_ray_session(session) == 2
        agent.wait(timeout=10)  # gone (stop_ray_session reaped it: no exit code left here)
        assert bystander.poll() is None
    finally:
        for p in (agent, bystander):
            p.kill()
            p.wait()
    assert stop_ray_session("/not/a/session") == 0


def test_a_killed_drivers_agents_that_name_no_session_are_found_by_their_open_logs(tmp_path):
    """Ray's dashboard and runtime-env agents outlive a SIGKILLed driver under process
    titles that name no session (`ray::DashboardAgent`); they hold their logs open in the
    session folder, and that is how they are found."""
    from rp_tune.adapters.ray.cluster import stop_ray_session

    session = tmp_path / f"session_2026-01-01_00-00-00_000000_{os.getpid()}"
    (session / "logs").mkdir(parents=True)
    code = "import os, time; f = open(os.environ['LOG'], 'a'); time.sleep(60)"
    env = {**os.environ, "LOG": str(session / "logs" / "dashboard_agent.out")}
    agent = subprocess.Popen([sys.executable, "-c", code, "ray::DashboardAgent"], env=env)
    other = subprocess.Popen([sys.executable, "-c", code, "ray::DashboardAgent"],
                             env={**env, "LOG": str(tmp_path / "elsewhere.out")})  # fmt: skip
    try:
        import psutil

        deadline = time.time() + 30
        while time.time() < deadline and not psutil.Process(agent.pid).open_files():
            time.sleep(0.1)  # the agent opens its log
        assert stop_ray_session(str(session)) == 1
        agent.wait(timeout=10)
        assert other.poll() is None  # another session's (or no session's) process
    finally:
        for p in (agent, other):
            p.kill()
            p.wait()


def test_any_command_against_the_storage_stops_what_a_killed_driver_of_any_sweep_left(
    tmp_path, capsys
):
    """--status of another sweep (here one that does not exist) still stops the Ray that a
    killed driver of the sweep `a` left running on this host; a live driver's Ray is left
    alone; for a dead driver on another host the console says how to stop its Ray there."""
    from tests.helpers import incli

    root = tmp_path / "res"
    root.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid with no process: the killed driver's
    dead_session = f"/tmp/ray/session_2026-01-01_00-00-00_000000_{gone.pid}"
    live_session = f"/tmp/ray/session_2026-01-01_00-00-01_000000_{os.getpid()}"
    sleep = "import time; time.sleep(60)"
    left = subprocess.Popen([sys.executable, "-c", sleep, f"--session_dir={dead_session}"])
    running = subprocess.Popen([sys.executable, "-c", sleep, f"--session_dir={live_session}"])
    _lease(root / ".a.driver.json", pid=gone.pid, ray_session=dead_session)
    _lease(root / ".b.driver.json", ray_session=live_session)  # this process: alive
    _lease(root / ".c.driver.json", host="elsewhere", heartbeat=time.time() - 3600,
           ray_session="/tmp/ray/session_2026-01-01_00-00-02_000000_7")  # fmt: skip
    try:
        r = incli(capsys, "--space", "smoke", "--storage", str(root), "--status")
        assert r.returncode == 2 and "start it with" in r.stderr  # no sweep `smoke`: as before
        left.wait(timeout=10)  # stopped
        assert running.poll() is None  # a live driver's Ray
        assert f"that the killed driver of the sweep 'a' (pid {gone.pid} on " in r.stdout
        assert "left running (" + dead_session + ")" in r.stdout
        assert (
            "the killed driver of the sweep 'c' (pid " in r.stdout
            and "on elsewhere, stop it with: pkill -9 -f session_2026-01-01_00-00-02_000000_7"
            in r.stdout
        ), r.stdout
        again = incli(capsys, "--space", "smoke", "--storage", str(root), "--status")
        assert "sweep 'a'" not in again.stdout  # nothing left to stop: nothing said
    finally:
        for p in (left, running):
            p.kill()
            p.wait()


def test_a_half_written_lease_holds_until_it_is_older_than_the_ttl(tmp_path):
    """A lease that does not parse (its writer killed mid-write) is neither ignored (two
    drivers) nor kept forever (a stuck sweep): it dies by its file time."""
    lock_file = tmp_path / ".s.driver.json"
    lock_file.write_text('{"host": "x", "pi')
    with pytest.raises(LockHeld, match="held by another driver"):
        DriverLock(str(lock_file), settle_s=0).acquire()
    old = time.time() - 120
    os.utime(lock_file, (old, old))
    lock = DriverLock(str(lock_file), ttl_s=60, settle_s=0)
    lock.acquire()
    assert json.loads(lock_file.read_text())["token"] == lock.token
    lock.release()


def test_a_live_driver_on_this_host_holds_its_lease_whatever_its_heartbeat(tmp_path):
    """A suspended driver (its heartbeat old, its process there) is not declared dead: its
    Ray would be stopped under it."""
    _lease(tmp_path / ".s.driver.json", heartbeat=time.time() - 3600)  # this pid: alive
    with pytest.raises(LockHeld):
        DriverLock(str(tmp_path / ".s.driver.json"), settle_s=0).acquire()


@pytest.mark.parametrize("kind", ["path", "file", "s3"])
def test_storage_reads_and_writes_paths_and_uris(tmp_path, kind, request):
    base = {"path": str(tmp_path), "file": tmp_path.as_uri()}.get(kind) or request.getfixturevalue(
        "s3_bucket"
    )
    f = storage.join(base, "sweep", "summary.json")
    assert not storage.exists(f) and storage.list_names(storage.join(base, "sweep")) == []
    storage.write_text(f, "a\n")
    storage.append_text(f, "b\n")
    assert storage.read_text(f) == "a\nb\n"
    assert storage.list_names(storage.join(base, "sweep")) == ["summary.json"]
    storage.copy_to_local(storage.join(base, "sweep"), tmp_path / "copy")
    assert (tmp_path / "copy" / "summary.json").read_text() == "a\nb\n"
    storage.delete(f)
    assert not storage.exists(f)
    if kind != "s3":
        assert not (tmp_path / "sweep" / "summary.json").exists()
    assert storage.resolve("rel") == str(Path("rel").resolve())
    assert storage.resolve("s3://bucket/prefix/") == "s3://bucket/prefix"


def test_a_dataset_in_s3_is_copied_to_the_node_cache_and_loads(tmp_path, s3_bucket, monkeypatch):
    import pyarrow.fs as pafs

    from rp_tune import data
    from rp_tune.config import DataConfig
    from tests.helpers import write_tiny_cifar10

    local = tmp_path / "datasets"
    write_tiny_cifar10(local, n_train=50, n_test=10)
    s3, prefix = pafs.FileSystem.from_uri(storage.join(s3_bucket, "datasets"))
    pafs.copy_files(
        str(local), prefix, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3
    )
    monkeypatch.setenv(data.DATA_CACHE_ENV, str(tmp_path / "cache"))
    root = storage.join(s3_bucket, "datasets")
    got = data.load_arrays(DataConfig(name="cifar10", root=root, download=False))
    want = data.load_arrays(DataConfig(name="cifar10", root=str(local), download=False))
    assert all(torch.equal(a, b) for a, b in zip(got.train, want.train))
    assert (data.data_cache(root) / "cifar-10-batches-py" / "test_batch").is_file()


def test_uri_helpers_keep_the_query_and_map_rays_paths():
    uri = "s3://bucket/rp?endpoint_override=h:9000&scheme=http"
    assert storage.join(uri, "smoke", "summary.json") == (
        "s3://bucket/rp/smoke/summary.json?endpoint_override=h:9000&scheme=http"
    )
    assert storage.join("s3://bucket", "smoke") == "s3://bucket/smoke"
    assert storage.basename(storage.join(uri, "smoke")) == "smoke"
    # Ray reports checkpoints as its filesystem's paths: `bucket/key` on S3
    assert storage.on_storage_of("bucket/rp/smoke-train/c1", storage.join(uri, "smoke")) == (
        "s3://bucket/rp/smoke-train/c1?endpoint_override=h:9000&scheme=http"
    )
    assert storage.on_storage_of("/data/c1", "/data/smoke") == "/data/c1"
    assert storage.on_storage_of("/data/c1", "file:///data/smoke") == "/data/c1"


def test_data_roots_on_a_uri_are_checked_before_the_sweep(tmp_path):
    from rp_tune.core.errors import SweepError
    from rp_tune.planning.space import check_data_roots
    from tests.helpers import write_tiny_cifar10

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    flat = {"data.name": "cifar10", "data.root": bucket.as_uri(), "data.download": "false"}
    with pytest.raises(
        SweepError, match=r"dataset cifar10 at .*: not there: \['cifar-10-batches-py'\] missing"
    ):
        check_data_roots(expand_space("smoke", flat))
    imagenet = {**flat, "data.name": "imagenet", "model.name": "resnet18"}
    with pytest.raises(SweepError, match=r"dataset imagenet at .*: not there: \['imagenet/train'"):
        check_data_roots(expand_space("smoke", imagenet))
    write_tiny_cifar10(bucket)
    check_data_roots(expand_space("smoke", flat))  # present: no error


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_remote_storage_without_a_tracking_server_fails_before_ray(tmp_path):
    shared = tmp_path / "bucket"
    r = subprocess.run(
        [sys.executable, "run_sweep.py", "--space", "smoke", "--storage", shared.as_uri()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "is remote: pass --tracking-uri" in r.stderr and "Traceback" not in r.stderr
    assert "Started a local Ray instance" not in r.stdout + r.stderr
    assert not shared.exists()


@pytest.mark.slow  # a process of its own or a longer loop: seconds
def test_storage_default_comes_from_the_environment(tmp_path):
    env = {**os.environ, "RP_TUNE_STORAGE": str(tmp_path / "shared")}
    r = subprocess.run(
        [sys.executable, "run_sweep.py", "--space", "smoke", "--report"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2 and f"no sweep at {tmp_path / 'shared' / 'smoke'}" in r.stderr
