"""Shared fixtures and markers.

* ``gpu``: skipped unless CUDA is available.
* ``browser``: skipped when Chromium or Playwright is missing, except where ``CI`` is set:
  there a missing browser is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)


@pytest.fixture
def chromium_path():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no chromium is installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(params=[torch.float64])
def dtype(request):
    return request.param
