"""Shared pytest settings."""


def pytest_configure(config):
    config.addinivalue_line("markers", "deploy: starts real SuperLink/SuperNode processes on loopback "
                                       "(slow; select with -m deploy, skip with -m 'not deploy')")
    config.addinivalue_line("markers", "slow: a real Flower simulation of a minute or more on a loaded CPU "
                                       "(runs by default; skip with -m 'not slow')")
