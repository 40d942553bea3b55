import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Shared CPUs make multi-threaded timings noisy; one thread compares modes fairly.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
