"""Tables of ``faceparse.bench`` results: one run, or variants against the baseline."""

from __future__ import annotations

from typing import Any

__all__ = ["measurements", "format_table", "format_comparison"]


def measurements(results: dict[str, Any]) -> dict[str, tuple[str, float, float | None]]:
    """Every figure of a result, keyed by what was measured: (setting, images/s, peak MiB)."""
    rows: dict[str, tuple[str, float, float | None]] = {}
    for row in results.get("data", []):
        rows[f"data workers={row['workers']}"] = ("", row["images_per_s"], None)
    if "train" in results:
        t = results["train"]
        rows["train"] = (f"{t['batch_size']}x{t['image_size']}px {t['precision']}",
                         t["images_per_s"], t["peak_mib"])
    if "infer" in results:
        i = results["infer"]
        for mode in ("labels", "softmax"):
            mfu = f" mfu={i[mode]['mfu']:.1%}" if i[mode]["mfu"] is not None else ""
            rows[f"infer {mode}"] = (
                f"{i['batch_size']}x{i['image_size']}px {i['precision']} "
                f"{i['gflops_per_image']:.1f} GFLOP/img{mfu}",
                i[mode]["images_per_s"], i[mode]["peak_mib"],
            )
    if "deploy" in results:
        d = results["deploy"]
        for engine in ("torch_cpu", "onnxruntime_cpu"):
            rows[f"deploy {engine}"] = (
                f"{d['batch_size']}x{d['image_size']}px fp32 median of {d['repeats']}",
                d[engine]["images_per_s"], None)
    if "predict" in results:
        p = results["predict"]
        setting = (f"{p['images']} JPEGs {p['photo_size']}px -> {p['image_size']}px, "
                   f"writes {'+'.join(k.split('.')[0] for k in p['written_per_photo'])}, "
                   f"model {p['model_share']:.0%} of the time")
        rows["predict end to end"] = (setting, p["end_to_end_images_per_s"], None)
        rows["predict model only"] = ("same inputs, forward only", p["model_images_per_s"], None)
    return rows


def _aligned(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _mib(peak: float | None) -> str:
    return "" if peak is None else f"{peak:.0f}"


def format_table(results: dict[str, Any]) -> str:
    """One row per measurement: what, setting, images/s, peak MiB."""
    rows = [("measured", "setting", "images/s", "peak MiB")]
    rows += [(key, setting, f"{rate:.2f}", _mib(peak))
             for key, (setting, rate, peak) in measurements(results).items()]
    return _aligned(rows)


def format_comparison(results: dict[str, Any]) -> str:
    """Each variant's figures against the same measurement of the baseline run."""
    base = measurements(results)
    rows = [("variant", "measured", "setting", "images/s", "x baseline", "peak MiB")]
    for key, (setting, rate, peak) in base.items():
        rows.append(("baseline", key, setting, f"{rate:.2f}", "1.00", _mib(peak)))
    for name, variant in results.get("compare", {}).items():
        if "error" in variant:
            rows.append((name, "failed", variant["error"][:60], "", "", ""))
        for key, (setting, rate, peak) in measurements(variant).items():
            ratio = f"{rate / base[key][1]:.2f}" if key in base else ""
            rows.append((name, key, setting, f"{rate:.2f}", ratio, _mib(peak)))
    return _aligned(rows)
