"""Finding and loading the experiment config files of configs/.

configs/ sits at the top of the repository and is also installed as the package
kt_transfer.configs, so the CLI finds its default config from a source checkout (run from
the repository root) and from an installed wheel (run from anywhere).
"""

import importlib.util
import os


def config_dir():
    """The directory holding embedded.py, imagenet_paper.py, tiny.py."""
    spec = importlib.util.find_spec("kt_transfer.configs")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    # A source checkout imported from the repository root: configs/ is next to the package.
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config_path(name):
    """Path of configs/<name>.py."""
    return os.path.join(config_dir(), f"{name}.py")


def unknown_key_message(error, argv, config_file):
    """The error line for a misspelled --config.* key (ml_collections raises a KeyError or
    AttributeError naming it, when the file is loaded or at the flag's definition)."""
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
    return (
        f"error: no such config key {error!s}: check the spelling of the --config.* "
        f"overrides ({overrides}) against {config_file}"
    )


def load(path_or_name):
    """get_config() of a config file, given its path or its name in configs/."""
    path = path_or_name if path_or_name.endswith(".py") else config_path(path_or_name)
    module_name = "kt_transfer_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
