"""One driver per sweep: the lease file beside the sweep's storage (path or URI)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from rp_tune import storage
from rp_tune.storage import DriverLock, LockHeld


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
    from rp_tune.sweep import stop_ray_session

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
