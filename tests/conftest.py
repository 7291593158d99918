import pytest
import torch

# The machines are 2-core; keep each test process to the cores it has.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory, monkeypatch):
    """Each test gets its own $CHATRWKV_HOME, so nothing (converted-weight caches, sessions)
    is written to the user's directories or shared between tests."""
    monkeypatch.setenv("CHATRWKV_HOME", str(tmp_path_factory.mktemp("home")))
