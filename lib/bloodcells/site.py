"""Stage ``site``: ``reports/index.html``, the page a reader opens first.

One self-contained page (no external scripts, fonts or images; figures embedded as data
URIs) that links every notebook report, shows the headline table and figure from
``metrics/summary.json``, lists what the active profile cuts from the overnight one
(``build/params/site.json``, written by the params stage) and states the provenance of
the numbers.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import json
import sys
from pathlib import Path

from bloodcells.paths import project_root, reports_dir
from bloodcells.plan import LARGEST_CPU_PROFILE, PARAMS_DIR
from bloodcells.timing import describe_machine, git_output, hardware, read_timings

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%}
.meta{color:#555;font-size:.9em}li{margin:.2em 0}
"""


def _title(report: Path) -> str:
    stem = report.stem
    number, _, name = stem.partition("_")
    return f"{number} · {name.replace('_', ' ')}"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _value(value) -> str:
    return "—" if value is None else html.escape(json.dumps(value))


def cuts_section(root: Path) -> list[str]:
    """What the active profile cuts from the overnight one, from the params stage's
    ``site.json``: a sentence, and a row per setting with both values."""
    path = root / PARAMS_DIR / "site.json"
    if not path.is_file():
        return []
    body = json.loads(path.read_text())
    rows, big = body["cuts"], LARGEST_CPU_PROFILE
    parts = ["<h2>What this profile leaves out</h2>"]
    if not rows:
        return [*parts, f"<p>Nothing: this is the <code>{big}</code> profile.</p>"]
    parts.append(
        f"<p>Under <code>{html.escape(body['profile'])}</code> these {len(rows)} settings "
        f"differ from <code>{big}</code>, the largest CPU profile: every number in these "
        f"reports is at this profile's values; <code>dvc exp run -S profile={big}</code> "
        "runs the other column's (—: not set, a study or change not run).</p>"
        f"<table><tr><th>setting</th><th>this profile</th><th>{big}</th></tr>"
    )
    parts += [
        f"<tr><td>{html.escape(r['setting'])}</td><td>{_value(r['this profile'])}</td>"
        f"<td>{_value(r[big])}</td></tr>"
        for r in rows
    ]
    return [*parts, "</table>"]


def build_index(root: Path | None = None) -> Path:
    """Write ``reports/index.html`` from the reports and metrics on disk; return its path."""
    root = root or project_root()
    reports = reports_dir(root)
    notebooks = sorted(p for p in reports.glob("[0-9][0-9]_*.html"))
    summary_path = root / "metrics" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Blood-cell classification: a reproducible study</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Blood-cell image classification on PBC: a reproducible study</h1>",
        "<p>A reproduction of <em>Decoding Cellular Complexity</em> (FICC 2025) on the PBC "
        "dataset (Acevedo et al., Data in Brief 2020, CC BY 4.0). Every number here was "
        "computed by the pipeline that wrote this page; numbers quoted from the paper are "
        "labelled as the paper's.</p>",
    ]
    if summary:
        ci = summary["best_test_accuracy_ci95"]
        parts.append(
            f"<p><strong>Best model (chosen on validation): "
            f"{html.escape(summary['best_model'])}</strong>, test accuracy "
            f"{100 * summary['best_test_accuracy']:.2f}% (95% CI {100 * ci[0]:.2f}–"
            f"{100 * ci[1]:.2f}), macro-F1 {100 * summary['best_macro_f1']:.2f}%.</p>"
        )
        champ = summary.get("champion")
        if champ:
            ips = read_timings("12_comparison", root).get("champion", {})
            ips = ips.get("inference_images_per_second")
            champ_ips = f"{ips:,.0f}" if ips else "n/a"
            cci = champ["test_accuracy_ci95"]
            parts.append(
                f"<p><strong>Champion: {html.escape(champ['name'])}</strong> (test-time "
                f"augmentation over {champ['views']} views, members chosen on validation): "
                f"test accuracy {100 * champ['test_accuracy']:.2f}% (95% CI "
                f"{100 * cci[0]:.2f}–{100 * cci[1]:.2f}), macro-F1 "
                f"{100 * champ['macro_f1']:.2f}%, {champ_ips} images/s.</p>"
            )
        seeded = (summary.get("seed_spread") or {}).get("families", {})
        parts.append(
            "<table><tr><th>model</th><th>test accuracy</th><th>95% CI</th>"
            "<th>over seeds (mean ± sd)</th><th>macro-F1</th>"
            "<th>image size</th><th>epochs</th><th>weights</th><th>train min</th></tr>"
        )
        for m in summary["models"]:
            timing = read_timings(f"train-{m['key']}", root).get(m["model"], {})
            spread = seeded.get(m["model"])  # a family, SupCon's control: by the run's name
            over_seeds = "one seed"
            if spread:  # the seed runs at this run's config, or a cheaper stand-in's
                at = (
                    ""
                    if spread.get("compared_runs_config", True)
                    else (f", {spread['epochs']}-epoch runs")
                )
                over_seeds = (
                    f"{spread['test_accuracy_mean']:.2f}% ± {spread['test_accuracy_sd']:.2f} "
                    f"({len(spread['seeds'])} seeds{at})"
                )
            parts.append(
                f"<tr><td>{html.escape(m['model'])}</td><td>{100 * m['test_accuracy']:.2f}%</td>"
                f"<td>[{100 * m['ci95'][0]:.2f}, {100 * m['ci95'][1]:.2f}]</td>"
                f"<td>{over_seeds}</td>"
                f"<td>{100 * m['macro_f1']:.2f}%</td><td>{m['image_size']} px</td>"
                f"<td>{m['epochs']}</td><td>{html.escape(str(m['weights']))}</td>"
                f"<td>{timing.get('train_minutes', 'n/a')}</td></tr>"
            )
        parts.append("</table>")
    parts += cuts_section(root)
    figure = reports / "figures" / "forest.png"
    if figure.is_file():
        parts.append(f"<h2>Ranking with confidence intervals</h2>{_img(figure)}")
    parts.append("<h2>Reports</h2><ul>")
    for report in notebooks:
        parts.append(f'<li><a href="{report.name}">{html.escape(_title(report))}</a></li>')
    card = reports / "model_card.html"
    if card.is_file():
        parts.append(f'<li><a href="{card.name}">Model card of the best model</a></li>')
    parts.append("</ul>")
    hw = hardware()
    meta = {
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": git_output("rev-parse", "HEAD"),
        "profile": summary["profile"] if summary else "unknown",
        "data hash (manifest sha256)": summary["data_hash"] if summary else "unknown",
        "hardware": describe_machine(hw),
    }
    parts.append("<h2>Provenance</h2><table>")
    parts += [f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in meta.items()]
    parts.append("</table></body></html>")
    out = reports / "index.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description="Build reports/index.html.").parse_args(argv)
    print(f"wrote {build_index()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
