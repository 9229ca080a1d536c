"""Figures shared by the dashboard (interactive plotly) and reports (HTML plus PNG)."""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import plotly.graph_objects as go

DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"]


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str],
                     title: str = "Confusion matrix") -> go.Figure:
    """Heatmap of a confusion matrix (rows true, columns predicted), counts in the cells."""
    import plotly.graph_objects as go
    z = np.asarray(confusion)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(classes), y=list(classes), colorscale="Blues", text=z, texttemplate="%{text}",
        hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true",
                      yaxis_autorange="reversed", height=520, margin=dict(l=60, r=20, t=50, b=60))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def confusion_grid_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str],
                          title: str = "Confusion matrix (click a cell)") -> go.Figure:
    """The confusion matrix drawn as a grid of square markers, so a click selects a cell:
    Streamlit returns point selections for scatter traces, and none for heatmaps. Point k is
    cell (true k // n, predicted k % n)."""
    import plotly.graph_objects as go
    z = np.asarray(confusion)
    n = len(classes)
    true, pred = np.divmod(np.arange(n * n), n)
    counts = z[true, pred]
    shade = np.log1p(counts)
    # white on the darker half of the colour scale, near-black on the lighter: grey text on
    # mid-blue cells could not be read
    dark = shade > 0.5 * max(shade.max(), 1e-9)
    fig = go.Figure(go.Scatter(
        x=[classes[p] for p in pred], y=[classes[t] for t in true], mode="markers+text",
        text=[str(c) for c in counts],
        textfont=dict(size=11, color=np.where(dark, "white", "#111827").tolist()),
        marker=dict(symbol="square", size=max(14, 420 // n), color=shade,
                    colorscale="Blues", line=dict(width=1, color="#e5e7eb")),
        customdata=np.stack([counts, np.where(true == pred, "classified correctly",
                                              "click to show them")], axis=1),
        # a click fades the other cells; their counts stay dark on the paler squares
        selected=dict(marker=dict(opacity=1.0)),
        unselected=dict(marker=dict(opacity=0.3), textfont=dict(color="#111827")),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[0]} images<br>"
                      "%{customdata[1]}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true", height=520,
                      margin=dict(l=60, r=20, t=50, b=60), clickmode="event+select",
                      plot_bgcolor="white")
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(classes),
                     showgrid=False)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=list(classes),
                     autorange="reversed", showgrid=False)
    return fig


def training_figures(metrics: list[dict], running: bool = True) -> tuple[go.Figure, go.Figure]:
    """Loss and accuracy curves from run-store metric rows (per step and per epoch), as two
    figures (a page lays them side by side, and a phone's narrow screen stacks them); before
    the first epoch's end the accuracy panel says when it fills in (``running``) or that no
    epoch finished."""
    import plotly.graph_objects as go

    loss, acc = go.Figure(), go.Figure()
    series: dict[str, list] = {}
    for m in metrics:
        series.setdefault(m["name"], []).append(m)
    step = series.get("train_loss_step", [])
    if step:
        loss.add_scatter(x=[m["step"] for m in step], y=[m["value"] for m in step],
                         name="train loss (step)", line=dict(color="#93c5fd", width=1))
    spe = max((m["step"] for m in step), default=1) / max(len(series.get("test_loss", [1])), 1)
    styles = {"test_loss": (loss, PALETTE[0], "test loss"),
              "train_acc": (acc, "#93c5fd", "train acc"),
              "test_acc": (acc, PALETTE[0], "clean test acc"),
              "robust_acc": (acc, PALETTE[1], "held-out APGD-CE acc")}
    for name, (fig, color, label) in styles.items():
        rows = series.get(name, [])
        if rows:
            fig.add_scatter(x=[(m["epoch"] + 1) * spe for m in rows], y=[m["value"] for m in rows],
                            mode="lines+markers", name=label, line=dict(color=color))
    if not series.get("test_acc"):
        # an invisible point keeps the empty panel's axes drawn, and the note inside them
        acc.add_scatter(x=[0], y=[0], mode="markers", marker=dict(opacity=0), showlegend=False,
                        hoverinfo="skip")
        acc.add_annotation(xref="x domain", yref="y domain", x=0.5, y=0.55, showarrow=False,
                           text=("Test accuracy (and held-out APGD-CE<br>for a defense) fills "
                                 "in at the end<br>of the first epoch") if running else
                                "No epoch finished,<br>so there is no test accuracy",
                           font=dict(color="#6b7280", size=13))
    for fig, title in ((loss, "loss"), (acc, "accuracy")):
        # whole steps from 0: one epoch's single point would otherwise sit on a fractional axis
        fig.update_xaxes(title_text="step", rangemode="tozero", tickformat="d")
        fig.update_layout(title=title, height=340, margin=dict(l=40, r=20, t=40, b=40),
                          legend=dict(orientation="h", y=-0.3))
    if step:
        acc.update_xaxes(range=[0, max(m["step"] for m in step) * 1.03])
    loss.update_yaxes(rangemode="tozero")  # a loss is never negative
    acc.update_yaxes(range=[0, 1], tickformat=".0%")
    return loss, acc


def robustness_figure(series: dict[str, list[tuple[float, float]]],
                      title: str = "Accuracy under attack") -> go.Figure:
    """Accuracy-versus-budget curves; ``series`` maps a label to (budget, accuracy) points.
    Series labelled ``(sigma)`` are random noise, a corruption: they get their own sigma axis
    beside the adversarial (epsilon) curves, never the same one."""
    from plotly.subplots import make_subplots

    noise = [label for label in series if label.endswith("(sigma)")]
    columns = 2 if noise and len(noise) < len(series) else 1
    # "model · attack (norm)": one colour per model, one dash per attack
    models = list(dict.fromkeys(label.split(" · ")[0] for label in series))
    attacks = list(dict.fromkeys(label.split(" · ")[-1] for label in series))
    by_model = len(models) < len(series)
    fig = make_subplots(rows=1, cols=columns, subplot_titles=(
        ("adversarial attacks", "random noise (a corruption, not an attack)")
        if columns == 2 else None))
    for i, (label, points) in enumerate(series.items()):
        points = sorted(points)
        col = 2 if columns == 2 and label in noise else 1
        axis = "sigma" if label in noise else "eps"
        colour = models.index(label.split(" · ")[0]) if by_model else i
        dash = DASHES[attacks.index(label.split(" · ")[-1]) % len(DASHES)] if by_model else None
        fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                        name=label, line=dict(color=PALETTE[colour % len(PALETTE)], dash=dash),
                        customdata=[round(p[0] * 255, 1) for p in points], row=1, col=col,
                        hovertemplate=axis + " %{x} (%{customdata}/255)<br>acc %{y:.1%}<extra>"
                                      + label + "</extra>")
    fig.update_xaxes(title_text="epsilon (pixel units)", row=1, col=1)
    if columns == 2:
        fig.update_xaxes(title_text="noise sigma (pixel units)", row=1, col=2)
    elif noise:
        fig.update_xaxes(title_text="noise sigma (pixel units)", row=1, col=1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", title_text="accuracy")
    fig.update_layout(title=title, height=420, margin=dict(l=50, r=20, t=70, b=50))
    return fig


def waterfall_figure(stages: list[dict], pending: Sequence[str] = (),
                     title: str = "Robust accuracy through the cascade",
                     labels: dict[str, str] | None = None, n: int | None = None) -> go.Figure:
    """Clean accuracy, then the drop each stage of the audit caused, then the robust accuracy
    that is left; stages still to run are on the axis, marked pending. Given the image count
    ``n``, the clean and the final robust bar carry their 95% Wilson interval as a whisker."""
    import plotly.graph_objects as go
    labels = labels or {}
    names = [labels.get(s["attack"], s["attack"]) for s in stages]
    values = [stages[0]["robust_acc"] * 100] + [
        (b["robust_acc"] - a["robust_acc"]) * 100 for a, b in zip(stages, stages[1:])]
    measures = ["absolute"] + ["relative"] * (len(stages) - 1)
    text = [f"{values[0]:.1f}%"] + [f"{v:+.1f} pp" for v in values[1:]]
    if stages and not pending:
        names.append("robust")
        values.append(stages[-1]["robust_acc"] * 100)
        measures.append("total")
        text.append(f"{values[-1]:.1f}%")
    for name in pending:
        names.append(labels.get(name, name))
        values.append(0.0)
        measures.append("relative")
        text.append("pending")
    whiskered = bool(n and stages and not pending)
    # a whiskered bar's label goes inside it, where the whisker does not strike it through
    # (a bar too short to hold it keeps it outside)
    positions = ["inside" if whiskered and k in (0, len(names) - 1) and values[k] >= 12
                 else "outside" for k in range(len(names))]
    fig = go.Figure(go.Waterfall(
        x=names, y=values, measure=measures, text=text, textposition=positions,
        insidetextanchor="end", insidetextfont=dict(color="white"),
        decreasing=dict(marker_color=PALETTE[1]), increasing=dict(marker_color=PALETTE[2]),
        totals=dict(marker_color=PALETTE[0]), connector=dict(line=dict(color="#9ca3af")),
        hovertemplate="%{x}: %{text}<extra></extra>"))
    if whiskered:
        _whiskers(fig, [names[0], names[-1]],
                  [stages[0]["robust_acc"], stages[-1]["robust_acc"]], n)
    fig.update_layout(title=title, yaxis_title="accuracy (%)", yaxis_range=[0, 105], height=380,
                      showlegend=False, margin=dict(l=60, r=20, t=50, b=40))
    return fig


def _whiskers(fig, names: list[str], shares: list[float], n: int) -> None:
    """95% intervals drawn over bars ``names`` (accuracies as shares of ``n`` images)."""
    import plotly.graph_objects as go

    from core import confidence

    bounds = [confidence.interval(confidence.count(v, n), n) for v in shares]
    fig.add_trace(go.Scatter(
        x=names, y=[v * 100 for v in shares], mode="markers", marker=dict(size=1, opacity=0),
        error_y=dict(type="data", symmetric=False, color="#374151", thickness=1.5, width=8,
                     array=[(hi - v) * 100 for v, (_, hi) in zip(shares, bounds)],
                     arrayminus=[(v - lo) * 100 for v, (lo, _) in zip(shares, bounds)]),
        customdata=[[lo * 100, hi * 100] for lo, hi in bounds],
        hovertemplate="%{x}: 95% interval %{customdata[0]:.1f}-%{customdata[1]:.1f}%"
                      "<extra></extra>"))


def epsilon_curve_figure(curves: dict[str, list[tuple[float, float]]], current: float,
                         budget: str = "eps") -> go.Figure:
    """Accuracy under attack against epsilon, one line per model, with the slider's epsilon
    marked by a dashed line and a ring on each curve."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for k, (name, points) in enumerate(curves.items()):
        colour = PALETTE[k % len(PALETTE)]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name,
                                 line=dict(color=colour)))
        here = [y for x, y in points if abs(x - current) < 1e-12]
        if here:
            fig.add_trace(go.Scatter(x=[current], y=here, mode="markers", showlegend=False,
                                     hovertemplate=f"{name}: %{{y:.1%}} at {budget} "
                                     "%{x:.4f}",
                                     marker=dict(size=14, color="rgba(0,0,0,0)",
                                                 line=dict(color=colour, width=3))))
    fig.add_vline(x=current, line_dash="dash", line_color="#6b7280",
                  annotation_text=f"{budget} {current:.4g}", annotation_position="top")
    fig.update_layout(height=240, margin=dict(l=40, r=10, t=24, b=30),
                      xaxis_title=f"{budget} (pixel units)", yaxis_title="accuracy",
                      yaxis_tickformat=".0%", yaxis_range=[0, 1.05],
                      legend=dict(orientation="h", y=-0.3), showlegend=len(curves) > 1)
    return fig


def epoch_curves_figure(curves: dict[str, list[tuple[int, float]]], title: str) -> go.Figure:
    """One metric per epoch (an accuracy), one line per run; a run keeps its colour in every
    chart drawn from the same ordered ``curves`` keys, and the legend names them."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for k, (name, points) in enumerate(curves.items()):
        if points:
            fig.add_trace(go.Scatter(x=[e for e, _ in points], y=[v for _, v in points],
                                     mode="lines+markers", name=name,
                                     line=dict(color=PALETTE[k % len(PALETTE)])))
    fig.update_layout(title=title, xaxis_title="epoch", height=320, yaxis_tickformat=".0%",
                      yaxis_range=[0, 1], xaxis_dtick=1, showlegend=True,
                      legend=dict(orientation="h", y=-0.25),
                      margin=dict(l=50, r=10, t=40, b=40))
    return fig


CLEAN_COLOUR, ADVERSARIAL_COLOUR = "#2563eb", "#dc2626"


def probability_bars(clean: Sequence[float], adversarial: Sequence[float],
                     classes: Sequence[str], true: int | None = None) -> str:
    """The model's class probabilities before and after the attack as a small HTML bar chart:
    one row per class (the true one in bold) on a 0-100% track, a legend, each row's figures on hover.

    Plain HTML rather than a plotly figure: a page shows one per example and redraws them all
    on every slider move, which plotly made several times slower to build and to render."""
    def bar(p: float, colour: str) -> str:
        return (f'<div style="height:5px;width:{100 * min(max(p, 0.0), 1.0):.1f}%;'
                f'background:{colour};margin:1px 0"></div>')

    def swatch(colour: str, name: str) -> str:
        return (f'<span style="display:inline-block;width:9px;height:9px;background:{colour};'
                f'margin:0 3px 0 8px"></span>{name}')

    rows = "".join(
        f'<span style="{"font-weight:600;" if k == true else ""}white-space:nowrap">'
        f'{html.escape(str(name))}</span>'
        f'<div style="background:#eef2f7" '  # the track: a full row is 100%
        f'title="{html.escape(str(name))}: clean {c:.1%}, adversarial {a:.1%}">'
        f'{bar(c, CLEAN_COLOUR)}{bar(a, ADVERSARIAL_COLOUR)}</div>'
        for k, (name, c, a) in enumerate(zip(classes, clean, adversarial)))
    return (f'<div style="font-size:11px;line-height:1.15">'
            f'<div style="margin-bottom:3px">{swatch(CLEAN_COLOUR, "clean")}'
            f'{swatch(ADVERSARIAL_COLOUR, "adversarial")}</div>'
            f'<div style="display:grid;grid-template-columns:max-content 1fr;gap:1px 6px;'
            f'align-items:center">{rows}</div></div>')


def save_html(fig: go.Figure, path: Path) -> None:
    """Interactive HTML beside a shared plotly.min.js (works offline)."""
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
                  title: str) -> None:
    """Static PNG of a confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    ax.imshow(z, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            ax.text(j, i, z[i, j], ha="center", va="center", fontsize=8,
                    color="white" if z[i, j] > z.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    save_png(fig, path)


def curves_png(series: dict[str, list[tuple[float, float]]], path: Path, title: str) -> None:
    """Static PNG of accuracy-versus-budget curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, (label, points) in enumerate(series.items()):
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label,
                color=PALETTE[i % len(PALETTE)])
    _finish_png(fig, ax, path, title, "epsilon (pixel units)", "accuracy")


def curve_png(curve, path: Path, title: str) -> None:
    """Static PNG of a robustness curve (robust accuracy against epsilon) with its 95% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    band = curve.band()
    eps = [b[0] for b in band]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.fill_between(eps, [b[2] for b in band], [b[3] for b in band], color=PALETTE[0],
                    alpha=0.15, step=None, label="95% interval")
    ax.plot(eps, [b[1] for b in band], color=PALETTE[0], label="robust accuracy")
    _finish_png(fig, ax, path, title, f"epsilon ({curve.norm}, pixel units)",
                "robust accuracy")


def _finish_png(fig, ax, path: Path, title: str, xlabel: str, ylabel: str) -> None:
    """Label an accuracy plot (0 to 1, grid, legend), write it atomically and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig, path: Path) -> None:
    """Write a matplotlib figure to ``path`` atomically (a temporary name, then a rename) and
    close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def curve_figure(curves: dict, current: float | None = None, marks: Sequence[dict] = (),
                 title: str = "", colours: dict[str, str] | None = None) -> go.Figure:
    """Robustness curves (name -> :class:`core.curve.RobustnessCurve`), one colour per model
    (``colours``, else in the order given), each with its 95% band; a dashed line at
    ``current``; ``marks``: fixed-budget figures (``eps``, ``acc``, ``label``) drawn as points
    to compare."""
    import plotly.graph_objects as go

    fig = go.Figure()
    top = max((max((v for v in c.norms if 0 < v < float("inf")), default=0.0)
               for c in curves.values()), default=0.0) or 1.0
    for k, (name, curve) in enumerate(curves.items()):
        colour = (colours or {}).get(name, PALETTE[k % len(PALETTE)])
        drawn = curve.drawn(top)
        eps = [d[0] for d in drawn]
        # the band: its upper edge, then its lower edge filled up to it, both stepping as
        # the line does (a step after each point)
        fig.add_trace(go.Scatter(x=eps, y=[d[3] for d in drawn], mode="lines",
                                 line=dict(width=0, shape="hv"), hoverinfo="skip",
                                 showlegend=False))
        fig.add_trace(go.Scatter(x=eps, y=[d[2] for d in drawn], mode="lines",
                                 line=dict(width=0, shape="hv"), fill="tonexty",
                                 fillcolor=faded(colour), hoverinfo="skip",
                                 showlegend=False))
        fig.add_trace(go.Scatter(x=eps, y=[d[1] for d in drawn], mode="lines", name=name,
                                 line=dict(color=colour, width=2, shape="hv"),
                                 hovertemplate="ε %{x:.4f}: %{y:.1%}<extra>" + html.escape(name)
                                 + "</extra>"))
    for mark in marks:
        fig.add_trace(go.Scatter(x=[mark["eps"]], y=[mark["acc"]], mode="markers",
                                 name=mark["label"], marker=dict(symbol="x", size=10,
                                                                 color="#111827"),
                                 hovertemplate=html.escape(mark["label"]) +
                                 ": %{y:.1%} at ε %{x:.4f}<extra></extra>", showlegend=False))
    norm = next(iter(curves.values())).norm if curves else "linf"
    fig.update_layout(title=title, height=320, margin=dict(l=50, r=10, t=40 if title else 20,
                                                           b=40),
                      xaxis_title=f"ε ({'L∞' if norm == 'linf' else 'L2'}, pixel units)",
                      yaxis_title="robust accuracy", yaxis_tickformat=".0%",
                      yaxis_range=[0, 1.02], legend=dict(orientation="h", y=-0.25),
                      showlegend=len(curves) > 1 or colours is not None)
    return with_marker(fig, current)


def with_marker(fig: go.Figure, current: float | None) -> go.Figure:
    """``fig`` with its dashed ε marker at ``current`` (none: no marker), changed in place: a
    slider move redraws a figure built once."""
    fig.layout.shapes = () if current is None else (dict(
        type="line", xref="x", yref="paper", x0=current, x1=current, y0=0, y1=1,
        line=dict(dash="dash", color="#6b7280", width=1.5)),)
    return fig


def faded(colour: str, alpha: float = 0.15) -> str:
    """A ``#rrggbb`` colour as rgba with ``alpha`` (a band's fill)."""
    c = colour.lstrip("#")
    return f"rgba({int(c[0:2], 16)}, {int(c[2:4], 16)}, {int(c[4:6], 16)}, {alpha})"


def breaking_points_figure(curves: dict, bins: int = 40) -> go.Figure:
    """Histogram of the smallest adversarial norms (the breaking points) of each model's
    correctly classified images, one colour per model; those never broken are left out (the
    legend counts them)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for k, (name, curve) in enumerate(curves.items()):
        finite = [v for v in curve.norms if 0 < v < float("inf")]
        never = sum(1 for v in curve.norms if v == float("inf"))
        # each image weighs 100/n: curves on 1,000 and on 100 images share one axis
        fig.add_trace(go.Histogram(x=finite, y=[100.0 / curve.n] * len(finite),
                                   histfunc="sum", nbinsx=bins, opacity=0.6,
                                   name=f"{name}, {curve.n:,} images" + (
                                       f" ({never} never broken)" if never else ""),
                                   marker_color=PALETTE[k % len(PALETTE)]))
    norm = next(iter(curves.values())).norm if curves else "linf"
    fig.update_layout(barmode="overlay", height=300, margin=dict(l=50, r=10, t=20, b=40),
                      xaxis_title=f"smallest adversarial {'L∞' if norm == 'linf' else 'L2'} "
                                  "norm (pixel units)", yaxis_title="% of the model's images",
                      legend=dict(orientation="h", y=-0.3), showlegend=True)
    return fig
