"""Tables of ``faceparse.bench`` results: one run, or variants against the baseline."""

from __future__ import annotations

from typing import Any

from faceparse.bench.ceiling import format_ceiling

__all__ = ["measurements", "format_table", "format_comparison", "format_profile", "format_census"]


def measurements(results: dict[str, Any]) -> dict[str, tuple[str, float, float | None]]:
    """Every figure of a result, keyed by what was measured: (setting, images/s, peak MiB)."""
    rows: dict[str, tuple[str, float, float | None]] = {}
    for row in results.get("data", []):
        rows[f"data workers={row['workers']}"] = ("", row["images_per_s"], None)
    if "train" in results:
        t = results["train"]
        mfu = f" mfu={t['mfu']:.1%}" if t.get("mfu") is not None else ""
        vit = " vit=bf16" if t.get("frozen_vit_bf16") else ""
        rows["train"] = (f"{t['batch_size']}x{t['image_size']}px {t['precision']}{vit}{mfu}"
                         f"{_warmup(t)}", t["images_per_s"], t["peak_mib"])
    if "infer" in results:
        i = results["infer"]
        for mode in ("labels", "softmax"):
            mfu = f" mfu={i[mode]['mfu']:.1%}" if i[mode]["mfu"] is not None else ""
            rows[f"infer {mode}"] = (
                f"{i['batch_size']}x{i['image_size']}px {i['precision']} "
                f"{i['gflops_per_image']:.1f} GFLOP/img{mfu}{_warmup(i[mode])}",
                i[mode]["images_per_s"], i[mode]["peak_mib"],
            )
    if "deploy" in results:
        d = results["deploy"]
        for engine in ("torch_cpu", "torch_fast_path", "onnxruntime_cpu"):
            precision = d["fast_path_precision"] if engine == "torch_fast_path" else "fp32"
            rows[f"deploy {engine}"] = (
                f"{d['batch_size']}x{d['image_size']}px {precision} median of {d['repeats']}",
                d[engine]["images_per_s"], None)
    if "predict" in results:
        p = results["predict"]
        setting = (f"{p['images']} JPEGs {p['photo_size']}px -> {p['image_size']}px, "
                   f"writes {'+'.join(k.split('.')[0] for k in p['written_per_photo'])}, "
                   f"model {p['model_share']:.0%} of the time, {p['weights']} weights, "
                   f"{p['boundary_share']:.1%} boundary pixels")
        rows["predict end to end"] = (setting, p["end_to_end_images_per_s"], None)
        rows["predict model only"] = ("same inputs, forward only", p["model_images_per_s"], None)
    if "profile" in results:
        p = results["profile"]
        for mode in ("train", "infer"):
            mfu = f" mfu={p[mode]['mfu']:.1%}" if p[mode]["mfu"] is not None else ""
            rows[f"profile {mode}"] = (f"{p['batch_size']}x{p['image_size']}px whole step{mfu}",
                                       p[mode]["images_per_s"], None)
    return rows


def _warmup(figures: dict[str, Any]) -> str:
    """The untimed steps' wall time: what compilation costs before the speed shows."""
    return f" warm-up {figures['warmup_s']:.1f}s" if "warmup_s" in figures else ""


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
    return _aligned(rows) + machine_line(results)


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
    return _aligned(rows) + machine_line(results)


def machine_line(results: dict[str, Any]) -> str:
    """Under a table: the machine its figures came from, so figures from two machines are
    never compared blind (CPU model and flags, the CPU policy, cores, GPU)."""
    info = results.get("machine") or {}
    gpu = f"; GPU {info['gpu']}" if info.get("gpu") else ""
    return (f"\nmeasured on: {info.get('cpu', '?')} (flags: {info.get('cpu_flags', '?')}); "
            f"CPU policy {info.get('cpu_policy', '?')}; {info.get('cores_usable', '?')} "
            f"cores, {info.get('torch_threads', '?')} torch threads{gpu}")


def format_profile(profile: dict[str, Any]) -> str:
    """Markdown tables of the ``profile`` section: stages, kernel classes, top kernels."""
    lines = [f"{profile['batch_size']} x {profile['image_size']} px on {profile['device']}, "
             f"bf16 {profile['bf16']}, channels_last {profile['channels_last']}, frozen ViT "
             f"in bf16 {profile.get('frozen_vit_bf16', False)}; forward "
             f"{profile['forward_gflops_per_image']:.0f} GFLOP/img, training step "
             f"{profile['train_gflops_per_image']:.0f} GFLOP/img; replay check "
             f"{profile['replay_max_abs_logit_diff']:.1e}"]
    if profile.get("compiled"):
        lines[0] += (f"; torch.compile mode {profile['compile_mode']}, scope "
                     f"{profile['compile_scope']} (each stage compiled alone)")
    for mode in ("train", "infer"):
        part = profile[mode]
        mfu = f", MFU {part['mfu']:.1%}" if part["mfu"] is not None else ""
        extra = (f", optimizer step {part['optimizer_ms']:.2f} ms" if "optimizer_ms" in part
                 else f"; the net as predict runs it, "
                      f"{profile.get('infer_batchnorms_folded', 0)} BatchNorms folded")
        staged = (f"stages alone sum to {part['stages_sum_ms']:.2f} ms" if part["stages"]
                  else "stages not timed alone (bench.profile.stages=false)")
        lines += ["", f"### {mode}: whole {part['whole_ms']:.2f} ms, {part['images_per_s']:.1f} "
                      f"img/s{mfu}; {staged}{extra}"]
        if part["stages"]:
            lines += ["", "| stage | forward ms | backward ms | share of the whole |",
                      "| --- | --- | --- | --- |"]
        lines += [f"| {r['stage']} | {r['forward_ms']:.2f} | "
                  f"{r['backward_ms']:.2f} | {r['share']:.1%} |" if "backward_ms" in r else
                  f"| {r['stage']} | {r['forward_ms']:.2f} | | {r['share']:.1%} |"
                  for r in part["stages"]]
        if "ceiling" in part:  # profiles recorded before the ceiling have none
            lines += ["", format_ceiling(part["ceiling"]) + "."]
        kernels = part["kernels"]
        lines += ["", f"kernel time {kernels['kernel_ms_per_step']:.2f} ms per step:", "",
                  "| kernel class | ms | share |", "| --- | --- | --- |"]
        lines += [f"| {name} | {c['ms']:.2f} | {c['share']:.1%} |"
                  for name, c in kernels["classes"].items()]
        lines += ["", "| top kernel | class | ms | calls | share |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| `{k['kernel'][:70]}` | {k['class']} | {k['ms']:.2f} | {k['calls']} | "
                  f"{k['share']:.1%} |" for k in kernels["top"]]
    v = profile["vit_blocks"]
    lines += ["", f"ViT (inference): {v['blocks']} blocks, {v['block_mean_ms']:.2f} ms each on "
                  f"average (max {v['block_max_ms']:.2f}), {v['outside_blocks_ms']:.2f} ms "
                  f"outside the blocks, {v['whole_vit_ms']:.2f} ms in all"]
    return "\n".join(lines)


def format_census(census: dict[str, Any], top: int = 20) -> str:
    """Markdown tables of the ``census`` section: GB moved by class, by stage, top ops."""
    lines = [f"{census['batch_size']} x {census['image_size']} px, {census['emulated']}, "
             f"channels_last {census['channels_last']}, frozen ViT in bf16 "
             f"{census['frozen_vit_bf16']}, BatchNorm folded for inference "
             f"{census['fold_batchnorm']}, LayerScale folded for inference "
             f"{census.get('fold_layer_scale', False)}, convolutions fused with their ReLU "
             f"(cuDNN) {census.get('fused_conv_relus', 0)}; bytes each op reads and writes "
             f"(a floor for its kernels' traffic)"]
    for mode in ("train", "infer"):
        part = census[mode]
        lines += ["", f"### {mode}: {part['total_gb']:.2f} GB", "",
                  "| class | forward GB | backward GB |", "| --- | --- | --- |"]
        lines += [f"| {name} | {gb.get('forward', 0.0):.2f} | {gb.get('backward', 0.0):.2f} |"
                  for name, gb in part["classes"].items()]
        lines += ["", "| stage | GB |", "| --- | --- |"]
        lines += [f"| {name} | {gb:.2f} |" for name, gb in list(part["stages"].items())[:12]]
        lines += ["", "| phase | stage | class | op | dtype | GB | calls |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['phase']} | {r['stage']} | {r['class']} | `{r['op']}` | {r['dtype']} | "
                  f"{r['gb']:.2f} | {r['calls']} |" for r in part["rows"][:top]]
    return "\n".join(lines)
