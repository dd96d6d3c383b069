"""Attention heatmaps: source subwords across, target subwords down."""

from __future__ import annotations

from pathlib import Path

from translator.io_utils import atomic_path


def plot_attention(hypothesis, path: Path | str, dpi: int = 100) -> Path:
    """Writes hypothesis.attention [target, source] as a PNG heatmap (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if hypothesis.attention is None:
        raise ValueError("this translation carries no attention; translate with "
                         "return_attention=True")
    weights = hypothesis.attention
    source, target = hypothesis.source_tokens, hypothesis.tokens
    width = max(4.0, 0.45 * len(source) + 1.5)
    height = max(3.0, 0.4 * len(target) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height), dpi=dpi)
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), source, rotation=90)
    ax.set_yticks(range(len(target)), target)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
