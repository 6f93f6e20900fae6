import logging
import types

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped with a reason where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO, logger="rp_tune")


@pytest.fixture
def s3_bucket(monkeypatch):
    """An S3-compatible server on loopback (moto) with an empty bucket; the URI of a prefix
    in it, with the endpoint in its query as for MinIO or any S3-compatible store."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    from tests.helpers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(key, value)
    endpoint = f"127.0.0.1:{port}"
    pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", allow_bucket_creation=True
    ).create_dir("bucket")
    yield f"s3://bucket/rp?endpoint_override={endpoint}&scheme=http"
    server.stop()


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """`run_sweep.py --space smoke`, run once per test session as a user runs it (starts its
    own Ray), with the workers' system metrics on (off by default on a CPU): its results root
    and the finished command. The sweep test goes on to extend it; the MLflow browser test
    opens its comparison view."""
    from tests.helpers import cli

    root = tmp_path_factory.mktemp("smoke") / "res"
    run = cli("--space", "smoke", "--storage", str(root), "--num-cpus", "2",
              "--system-metrics", "on")  # fmt: skip
    return types.SimpleNamespace(root=root, run=run)
