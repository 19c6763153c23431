"""The SIR paper's reported average incremental accuracy (its results figure, read off the
plot to about +-1 point; transcribed from ../shared/docs/SIR_METHOD.md), for reference
lines in ``sircil report --paper``. Keys: (dataset, steps) -> method -> {m: accuracy}."""

from __future__ import annotations

_M = (20, 15, 10, 5, 1)


def _row(*values: float) -> dict[int, float]:
    return dict(zip(_M, values))


PAPER_AVERAGE_INCREMENTAL_ACCURACY: dict[tuple[str, int], dict[str, dict[int, float]]] = {
    ("cifar100", 5): {
        "iCaRL": _row(57.1, 55.1, 53.3, 44.2, 42.9),
        "UCIR": _row(63.2, 61.8, 61.3, 50.6, 45.2),
        "PODNet": _row(64.8, 62.6, 61.3, 53.3, 44.5),
        "DDE": _row(65.5, 65.0, 64.3, 61.0, 57.5),
        "DER": _row(74.0, 71.5, 68.5, 57.5, 57.0),
        "SIR_P": _row(67.8, 67.6, 67.2, 65.2, 65.1),
        "SIR_D": _row(74.3, 72.5, 70.1, 60.4, 60.1),
    },
    ("cifar100", 10): {
        "iCaRL": _row(52.2, 51.3, 47.8, 41.4, 31.7),
        "UCIR": _row(60.1, 59.0, 58.1, 53.5, 32.0),
        "PODNet": _row(62.6, 61.1, 58.8, 56.0, 35.8),
        "DDE": _row(64.0, 62.2, 62.0, 60.5, 53.0),
        "DER": _row(72.5, 70.0, 66.0, 56.0, 47.8),
        "SIR_P": _row(67.0, 66.8, 66.3, 65.9, 65.6),
        "SIR_D": _row(72.9, 70.3, 67.5, 57.9, 51.0),
    },
    ("imagenet_subset", 5): {
        "iCaRL": {20: 64.9, 1: 49.8},
        "UCIR": {20: 70.7, 1: 53.9},
        "PODNet": {20: 75.6, 1: 57.6},
        "DER": {20: 77.5, 1: 67.0},
        "SIR_P": {20: 77.2, 1: 71.7},
        "SIR_D": {20: 77.9, 1: 68.7},
    },
    ("imagenet_subset", 10): {
        "iCaRL": {20: 59.6, 1: 42.4},
        "UCIR": {20: 68.2, 1: 46.3},
        "PODNet": {20: 73.6, 1: 48.7},
        "DER": {20: 76.0, 1: 54.6},
        "SIR_P": {20: 76.9, 1: 71.0},
        "SIR_D": {20: 76.2, 1: 57.4},
    },
}
