"""Training throughput: sircil's on-device data path vs. the compute limit and the anchors' PIL DataLoader.

The same as ``sircil bench`` (src/sircil/bench.py says what each pipeline times), kept here
beside the other benchmarks; writes benchmarks/results/throughput_<device type>.json.

    python benchmarks/throughput.py [--set train.device=cuda] [--set train.precision=bf16] [--epochs 2] [--workers N]
"""

import sys

from sircil.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
