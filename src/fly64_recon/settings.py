"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from fly64_recon.config import StudyContext
from fly64_recon.display.logs import install_warning_filters
from fly64_recon.hooks import StudyRunHooks

# Warnings from other packages that a person running the study cannot act on.
install_warning_filters()

HOOKS = (StudyRunHooks(),)

# The pipeline registry reads the study design from this context's configuration.
CONTEXT_CLASS = StudyContext

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/full, conf/local) overrides single keys, not whole sections.
    "merge_strategy": {"parameters": "soft", "globals": "soft", "catalog": "soft"},
}
