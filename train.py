"""Train a ResNet, optionally pruned (prune_method: none | gmp | rpg | rigl | psap; rigl's grow_rule
gives SET and static sparse training too).

    python train.py --config_path config/resnet20_fashion_mnist.yaml --data_path DIR [--key value ...]
"""
from src.interrupt import STOP

STOP.install()  # first thing: a Ctrl-C during the imports below (MindSpore's) is one line, exit 130

from src.cli import run  # noqa: E402
from src.config import check_launcher, check_training_mode, parse_args  # noqa: E402
from src.trainer import Trainer  # noqa: E402


def main():
    cfg, _ = parse_args(description=__doc__)
    check_launcher(cfg)
    check_training_mode(cfg)
    Trainer(cfg).train()


if __name__ == "__main__":
    run(main)
