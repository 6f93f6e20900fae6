import logging

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
