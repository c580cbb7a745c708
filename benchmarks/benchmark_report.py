"""Timing helpers, the cached float training and the BENCHMARKS.md writer shared by the
benchmark scripts."""

import os
import platform
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")


def median_seconds(fn, runs=10, warmup=2):
    """Median wall time of `fn()` over `runs` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_median_seconds(cases, rounds, runs, warmup=2):
    """{key: seconds} for `cases` {key: fn}: in each of `rounds` rounds every case takes
    its turn (`median_seconds` of `runs` calls); the median of a case's round medians."""
    times = {key: [] for key in cases}
    for _ in range(rounds):
        for key, fn in cases.items():
            times[key].append(median_seconds(fn, runs=runs, warmup=warmup))
    return {key: statistics.median(t) for key, t in times.items()}


def train_float_cached(model, path, x_train, y_train, epochs, batch_size, cache=True):
    """`model` with the float weights cached at `path` (with `cache`), else trained `epochs`
    epochs (Adam, cosine decay from 3e-3) and, with `cache`, saved there."""
    import keras

    if cache and os.path.exists(path):
        model.load_weights(path)
        return model
    steps = epochs * -(-len(x_train) // batch_size)
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=2)
    if cache:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        model.save_weights(path)
    return model


def cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_section(name):
    """The current text of the BENCHMARKS.md section `name` ("" when absent)."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    if not os.path.exists(BENCHMARKS_MD):
        return ""
    with open(BENCHMARKS_MD) as handle:
        text = handle.read()
    if begin not in text or end not in text:
        return ""
    return text.split(begin, 1)[1].split(end, 1)[0]


def write_section(name, command, body):
    """Replaces (or appends) the section `name` of BENCHMARKS.md."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    section = (f"{begin}\n## {name}\n\n`{command}` on {cpu_name()}, {os.cpu_count()} cores, "
               f"{time.strftime('%Y-%m-%d')}.\n\n{body.strip()}\n{end}\n")
    text = ""
    if os.path.exists(BENCHMARKS_MD):
        with open(BENCHMARKS_MD) as handle:
            text = handle.read()
    if not text:
        text = ("# Benchmarks\n\nRatios measured side by side in one process; each section "
                "names the command that wrote it.\n\n")
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(BENCHMARKS_MD, "w") as handle:
        handle.write(text)
