"""The plots of `tfquant report` (matplotlib, drawn off-screen)."""

import numpy as np

from tfquant.export import files


def pyplot():
    """matplotlib.pyplot; an ImportError saying how to get it."""
    return files.pyplot("The report")


def plot_weight_histogram(row, path):
    """Histogram of a kernel's float values, the grid of its widest channel overlaid
    (every level up to 33 levels, else every n-th) and the clip limits dashed."""
    plt = pyplot()
    bits, step = row["bits"], float(np.max(row["steps"]))
    qmax = 2 ** (bits - 1) - 1
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(row["values"].ravel(), bins=120, color="#4c72b0", alpha=0.85,
            label="float weights (BN folded)")
    every = max(1, -(-(2 * qmax + 1) // 33))
    for k in range(-qmax, qmax + 1, every):
        ax.axvline(k * step, color="#dd8452", linewidth=0.7, alpha=0.8)
    for limit in (-qmax * step, qmax * step):
        ax.axvline(limit, color="#c44e52", linestyle="--", linewidth=1.4)
    ax.plot([], [], color="#dd8452", label="grid levels" + (f" (every {every}th)"
                                                              if every > 1 else ""))
    ax.plot([], [], color="#c44e52", linestyle="--", label="clip ±max")
    per_channel = len(row["steps"]) > 1
    ax.set_title(f"{row['layer']}.{row['kernel']}: {bits}-bit {row['quantizer']}"
                 f"{' (grid of the widest channel)' if per_channel else ''}", fontsize=9)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.legend(fontsize=7, loc="upper right")
    files.save_figure(fig, path)


def plot_sqnr(rows, path):
    plt = pyplot()
    names = [f"{r['layer']}.{r['kernel']}" if r["kernel"] != "kernel" else r["layer"]
             for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 3.8))
    ax.bar(range(len(rows)), [min(r["sqnr_db"], 99.0) for r in rows], color="#55a868")
    for i, row in enumerate(rows):
        ax.text(i, min(row["sqnr_db"], 99.0), f"{row['bits']}b", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("weight SQNR (dB)")
    ax.set_title("Weight quantization SQNR per layer (BN folded)", fontsize=9)
    files.save_figure(fig, path)


def plot_activation_ranges(rows, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, max(2.5, 0.32 * len(rows) + 1.2)))
    for i, row in enumerate(rows):
        if row["range"] is not None:
            low, high = row["range"]
            ax.plot([low, high], [i, i], color="#4c72b0", linewidth=6, alpha=0.6,
                    solid_capstyle="butt", label="quantizer range" if i == 0 else None)
        low, high = row["observed"]
        ax.plot([low, high], [i, i], "|", color="#c44e52", markersize=12, markeredgewidth=2,
                label="output min/max on the data" if i == 0 else None)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['layer']} ({r['bits']}b)" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0.0, color="gray", linewidth=0.6)
    ax.set_xlabel("value")
    ax.set_title("Activation quantizer ranges", fontsize=9)
    # Below the axes: inside, it would cover the bars of the last layers.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2,
              frameon=False)
    files.save_figure(fig, path)


def plot_integer_layers(rows, path):
    """Per layer: SQNR against float of the float simulation and of the integer model,
    and the share of values where the two differ."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True,
                                      figsize=(max(6.4, 0.45 * len(rows) + 2), 5.2))
    x = np.arange(len(rows))
    top.plot(x, [min(r["float_sim_sqnr_db"], 99.0) for r in rows], "o-", color="#4c72b0",
             label="float simulation (Keras)")
    top.plot(x, [min(r["integer_sqnr_db"], 99.0) for r in rows], "s--", color="#c44e52",
             label="integer model (LiteRT)")
    top.set_ylabel("SQNR vs float (dB)")
    top.legend(fontsize=7)
    top.set_title("Where accuracy is lost, and where Keras and the phone part", fontsize=9)
    bottom.bar(x, [100 * r["differ"] for r in rows], color="#dd8452")
    bottom.set_ylabel("values differing (%)")
    bottom.set_xticks(x)
    bottom.set_xticklabels([r["layer"] for r in rows], rotation=60, ha="right", fontsize=7)
    files.save_figure(fig, path)
