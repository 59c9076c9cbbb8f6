"""Training and eval throughput (images/s) on this CPU, graph mode, fp32.

    python -m benchmarks.throughput            # writes benchmarks/results/throughput.{json,md}

ResNet-20 at Fashion-MNIST size (1x28x28, batch 128) and ResNet-50 at 224 (3x224x224, batch 32);
random data, so the numbers are the network's, not the input pipeline's.
"""

from benchmarks.common import machine_info, random_batch, timed, training_setup, write_results
from src.cli import OneLineParser

CASES = [
    {"name": "resnet20 fashion-mnist", "net": "resnet20", "in_channels": 1, "image_size": 28,
     "num_classes": 10, "batch": 128, "repeats": 20},
    {"name": "resnet50 imagenet", "net": "resnet50", "in_channels": 3, "image_size": 224,
     "num_classes": 1000, "batch": 32, "repeats": 5},
]


def measure(case):
    cfg, net, _, step, _ = training_setup({"net": case["net"], "in_channels": case["in_channels"],
                                           "image_size": case["image_size"],
                                           "num_classes": case["num_classes"],
                                           "batch_size": case["batch"]})
    batch = random_batch(cfg, case["batch"])
    train_s, _ = timed(lambda: step(*batch).asnumpy(), case["repeats"])
    net.set_train(False)
    eval_s, _ = timed(lambda: net(batch[0]).asnumpy(), case["repeats"])
    return {"case": case["name"], "batch": case["batch"],
            "input": [case["in_channels"], case["image_size"], case["image_size"]],
            "train_step_s": train_s, "train_images_per_s": case["batch"] / train_s,
            "eval_batch_s": eval_s, "eval_images_per_s": case["batch"] / eval_s}


def main():
    parser = OneLineParser(description=__doc__)
    parser.parse_args()
    results = [measure(case) for case in CASES]
    info = machine_info()
    lines = ["# Throughput on this machine (CPU, graph mode, fp32, median of repeated steps)", "",
             "Command: `python -m benchmarks.throughput`", "",
             f"Machine: {info['cpu_count']} cores, MindSpore {info['mindspore']}, "
             f"1-min load average at the end {info['load_average_1min']:.2f}", "",
             "| network | input | batch | train step (s) | train img/s | eval img/s |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['case']} | {'x'.join(map(str, r['input']))} | {r['batch']} | "
                     f"{r['train_step_s']:.3f} | {r['train_images_per_s']:.1f} | "
                     f"{r['eval_images_per_s']:.1f} |")
    write_results("throughput", {"machine": info, "results": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
