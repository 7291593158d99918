import os

import pytest
import torch

# The machines are 2-core; keep each test process to the cores it has.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True, scope="session")
def _temporary_home(tmp_path_factory):
    """What the code caches or saves by default (prompt states, the parsed vocabulary) goes to a
    temporary $CHATRWKV_HOME, never the user's; tests that need another home set their own."""
    old = os.environ.get("CHATRWKV_HOME")
    os.environ["CHATRWKV_HOME"] = str(tmp_path_factory.mktemp("home"))
    yield
    if old is None:
        os.environ.pop("CHATRWKV_HOME", None)
    else:
        os.environ["CHATRWKV_HOME"] = old
