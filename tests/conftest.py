"""Test setup: nnU-Net's folders point into a per-session temporary folder *before* vfscreen/nnunetv2 are imported,
so tests never touch a user's data. Heavy tests share session-scoped fixtures."""
import os
import shutil
import tempfile
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="vfscreen_tests_"))
for _variable, _sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
    os.environ[_variable] = str(_SESSION_HOME / _sub)
    (_SESSION_HOME / _sub).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("nnUNet_compile", "f")
os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ["VFSCREEN_QUIET"] = "1"
os.environ.setdefault("VFSCREEN_MEASURE_SPEED", "0")  # plans from the speed model (deterministic, fast); tests of the
# measured path ask for it explicitly

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = PROJECT_ROOT / "tests" / "data"  # real CT + TotalSegmentator mask (Apache-2.0, see tests/data/NOTICE)
EXAMPLE_CT = TEST_DATA / "totalsegmentator_example_ct.nii.gz"
EXAMPLE_CT_VERTEBRAE = TEST_DATA / "totalsegmentator_example_ct_vertebrae.nii.gz"


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's data folder (~100 MB) unless VFSCREEN_KEEP_TEST_DATA=1 (to inspect a failure)."""
    if os.environ.get("VFSCREEN_KEEP_TEST_DATA") == "1":
        print(f"\nvfscreen test data kept in {_SESSION_HOME}")
    else:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture
def example_ct() -> Path:
    """The real abdominal CT of the TotalSegmentator project's tests (Apache-2.0), copied into tests/data."""
    assert EXAMPLE_CT.is_file(), f"{EXAMPLE_CT} is part of the repository; restore it (git checkout tests/data)"
    return EXAMPLE_CT


@pytest.fixture
def example_ct_vertebrae() -> Path:
    """TotalSegmentator's vertebra mask of ``example_ct`` (v2 ``total`` ids + embedded label table), tests/data."""
    assert EXAMPLE_CT_VERTEBRAE.is_file(), f"{EXAMPLE_CT_VERTEBRAE} is part of the repository; restore it"
    return EXAMPLE_CT_VERTEBRAE


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s (still part of the default run)")
