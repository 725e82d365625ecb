"""Shared fixtures; and a torch.compile cache of the test run's own."""
import atexit
import functools
import os
import shutil
import tempfile

import pytest

# torch.compile's on-disk caches (/tmp/torchinductor_<user> by default) know sn's custom operators
# by name alone, so graphs compiled against an earlier version of this checkout could be served to
# the tests: every run (and the subprocesses it starts) compiles into a fresh directory instead
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="sn-tests-inductor-")
    atexit.register(functools.partial(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True))

import sn
from sn import native as SNN


@pytest.fixture(params=["C kernels", "torch ops"])
def implementation(request):
    """Runs a test on both CPU implementations: the C kernels (sn.native) and the
    PyTorch-operation paths that GPUs and machines without a C compiler use."""
    native = request.param == "C kernels"
    assert not native or SNN.library() is not None, SNN.status()
    with sn.implementation("native" if native else "torch"):
        yield request.param
