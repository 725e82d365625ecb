"""Shared fixtures."""
import pytest

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
