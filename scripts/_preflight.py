"""Checks a launcher makes before it writes anything: the recipe parses, and a fresh run's
output_dir holds no other run; no live process holds output_dir (src/run_lock.py). Prints
output_dir. Usage: _preflight.py --config_path C [--k v ...]

``_preflight.py --check_folder DIR``: only that no training run holds DIR (run_eval.sh and
run_export.sh, before they write beside a checkpoint); prints nothing.

``_preflight.py --check_port ADDR PORT``: that msrun's scheduler can listen on ADDR:PORT
(run_distribute_train.sh on node 0): a port another process listens on would make the scheduler
die at start-up while the workers wait for it; prints nothing."""
import errno
import os
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from src.interrupt import STOP  # noqa: E402

STOP.install()  # first thing: a Ctrl-C during the imports below (MindSpore's) is one line, exit 130

from src import run_lock, run_record  # noqa: E402
from src.cli import run  # noqa: E402
from src.config import parse_args  # noqa: E402
from src.errors import ConfigError  # noqa: E402


def check_port(addr, port):
    """ConfigError if another process listens on ``addr:port`` (an address not of this machine
    is left to msrun)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT leftovers are fine
        try:
            probe.bind((addr, int(port)))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(f"MASTER_PORT {port} on {addr} is in use by another process (another "
                                  "msrun?): set MASTER_PORT to a free port") from None


def main():
    if sys.argv[1:2] == ["--check_port"] and len(sys.argv) == 4:
        check_port(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1:2] == ["--check_folder"] and len(sys.argv) == 3:
        run_lock.check_free(sys.argv[2], exclusive=False, label="folder")
        return
    cfg, _ = parse_args(sys.argv[1:])
    run_lock.check_free(cfg.output_dir)
    if not cfg.resume_ckpt:
        run_record.claim_fresh(cfg.output_dir)
    print(cfg.output_dir)


if __name__ == "__main__":
    run(main)
