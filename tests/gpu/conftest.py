"""GPU tests share the reward tests' tiny COMET checkpoint fixture."""
from tests.reward.conftest import tiny_comet_dir  # noqa: F401 - a fixture
