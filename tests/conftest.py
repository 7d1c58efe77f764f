"""Shared pytest settings."""


def pytest_configure(config):
    config.addinivalue_line("markers", "deploy: starts real SuperLink/SuperNode processes on loopback "
                                       "(slow; select with -m deploy, skip with -m 'not deploy')")
    config.addinivalue_line("markers", "slow: a real Flower simulation of a minute or more on a loaded CPU "
                                       "(runs by default; skip with -m 'not slow')")


# Overrides for tests whose checks read alpha as plain float32 values (bytes = K x 4 + envelope, the
# test-only ClientApp's attacks and dumps): the default config codes it in fewer bits.
FLOAT32_ALPHA = ["pranc.uplink_codec=float32", "pranc.downlink_codec=float32"]
