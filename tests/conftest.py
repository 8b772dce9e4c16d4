import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads a real model (run by the README test command too)")


@pytest.fixture(scope="session")
def smollm2():
    from pop_local.models import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def long_text():
    """An original passage (not calibration text), long enough for 2048-token prompts."""
    from pop_local.texts import passage

    return passage()
