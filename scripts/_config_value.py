"""Print one value of a recipe (with overrides), for the shell launchers: KEY --config_path C [--k v ...]."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from src.cli import run  # noqa: E402
from src.config import parse_args  # noqa: E402


def main():
    key = sys.argv[1]
    import src.pruning.registry  # noqa: F401
    cfg, _ = parse_args(sys.argv[2:])
    print(cfg[key])


if __name__ == "__main__":
    run(main)
