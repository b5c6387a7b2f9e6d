import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("PMPC_DATA", REPO.parent / "shared" / "data"))
STORIES = pathlib.Path(os.environ.get("PMPC_STORIES", REPO.parent / "shared" / "models" / "stories260K"))
os.environ.setdefault("PMPC_STORIES", str(STORIES))


@pytest.fixture(scope="session", autouse=True)
def psk_file(tmp_path_factory):
    """Every `pmpc party` a test starts (in-process or as a subprocess) reads this pre-shared key
    (PMPC_PSK_FILE); `pmpc run` and run_local draw their own."""
    from pmpc.mpc import handshake

    path = tmp_path_factory.mktemp("psk") / "psk"
    path.write_bytes(handshake.new_psk())
    old = os.environ.get("PMPC_PSK_FILE")
    os.environ["PMPC_PSK_FILE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PMPC_PSK_FILE", None)
    else:
        os.environ["PMPC_PSK_FILE"] = old


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a shared CPU punishes oversubscription."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_dir():
    assert DATA.exists(), f"shared data missing at {DATA} (set PMPC_DATA)"
    return DATA


@pytest.fixture(scope="session")
def stories_dir():
    assert STORIES.exists(), f"stories260K missing at {STORIES} (set PMPC_STORIES)"
    return STORIES


def pytest_collection_modifyitems(config, items):
    """GPU tests are reported as skipped with the reason, never silently dropped."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        mark = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(mark)
