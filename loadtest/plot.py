"""`keyroom loadtest --plot out.png`: latency and server CPU/RSS over time, from the report."""

from __future__ import annotations

from typing import Any


def plot_reports(reports: dict[str, dict[str, Any]], path: str) -> None:
    """One figure for one run, or for a server and its baselines (same scenario): latency
    percentiles on top, server CPU (solid) and RSS (dotted) below, time 0 = measured phase."""
    import matplotlib

    # No display on a server or in CI; Agg writes the file without one.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure, (latency_axes, cpu_axes) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    rss_axes = cpu_axes.twinx()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    titles = []
    for (label, report), colour in zip(reports.items(), colours, strict=False):
        s = report["scenario"]
        titles.append(label)
        timeline = report["latency_timeline"]
        if timeline:
            t = [row[0] for row in timeline]
            for column, name, style in ((1, "p50", "-"), (2, "p95", "--"), (3, "p99", ":")):
                latency_axes.plot(
                    t, [row[column] for row in timeline], style, color=colour,
                    label=f"{label} {name}",
                )  # fmt: skip
        server = report.get("server")
        if server:
            t = [row[0] for row in server["timeline"]]
            cpu_axes.plot(
                t, [row[1] for row in server["timeline"]], "-", color=colour,
                label=f"{label} CPU (mean {server['cpu_percent_mean']} %)",
            )  # fmt: skip
            rss_axes.plot(
                t, [row[2] for row in server["timeline"]], ":", color=colour,
                label=f"{label} RSS",
            )  # fmt: skip
        measured = report["measured_s"]
    for axes in (latency_axes, cpu_axes):
        # The measured phase: before it clients join, after it they drain and leave.
        axes.axvspan(0, measured, color="0.93", zorder=0)
        axes.grid(True, alpha=0.3)
    latency_axes.set_ylabel("one-way latency through the server (ms)")
    latency_axes.set_yscale("log")
    latency_axes.yaxis.set_major_formatter(ticker.ScalarFormatter())
    if latency_axes.lines:
        latency_axes.legend(fontsize="small", ncol=3)
    else:
        latency_axes.text(
            0.5, 0.5, "no latency samples", ha="center", transform=latency_axes.transAxes
        )
    cpu_axes.set_ylabel("server CPU (% of one core)")
    rss_axes.set_ylabel("server RSS (MiB, dotted)")
    cpu_axes.set_xlabel("seconds since the measured phase began (shaded)")
    handles = cpu_axes.get_legend_handles_labels()
    if handles[0]:
        cpu_axes.legend(*handles, fontsize="small", loc="upper left")
    figure.suptitle(
        f"{' vs '.join(titles)}: {s['name']} ({s['video_publishers']} video +"
        f" {s['audio_publishers']} audio publishers, {s['subscribers']} subscribers,"
        f" {s['codec']})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
