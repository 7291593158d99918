import torch

# The machines are 2-core; keep each test process to the cores it has.
torch.set_num_threads(min(2, torch.get_num_threads()))
