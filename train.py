"""Train a ResNet, optionally pruned (prune_method: none | gmp | rpg | psap).

    python train.py --config_path config/resnet20_fashion_mnist.yaml --data_path DIR [--key value ...]
"""
from src.cli import run
from src.config import check_launcher, check_training_mode, parse_args


def main():
    cfg, _ = parse_args(description=__doc__)
    check_launcher(cfg)
    check_training_mode(cfg)
    from src.trainer import Trainer  # heavy imports after the config is checked
    Trainer(cfg).train()


if __name__ == "__main__":
    run(main)
