"""The training-speed and memory targets: AA / twin ratios that `speed_targets` measures against and
`profile_step` turns into time budgets for the fused attention (issue 26)."""

# name: (AA model, twin, image size, batch, target train-step ratio)
NETWORKS = {
    "wrn28_10": ("aa_wrn28_10", "wrn28_10", 32, 32, 1.35),
    "resnet50": ("aa_resnet50", "resnet50", 224, 4, 1.05),
}
# The layer against Conv2D of the same filters: 3x3, 8 heads, dk = dv = 0.2 x filters, this batch.
LAYER_BATCH = 8
# (filters, size, target train-step ratio): bench_layer's shapes, then the WRN's.
LAYER_SHAPES = [(256, 14, 1.15), (256, 28, 1.3), (256, 56, 2.5), (160, 32, 1.3), (320, 16, 1.15), (640, 8, 1.15)]
# (size, target ratio of the train step's peak memory) at 256 channels.
MEMORY_SIZES = [(56, 1.25), (112, 1.25)]


def budget(target, twin_ms, step_ms, fused_ms, floors_ms):
    """What a target ratio (step / twin's step) leaves the fused attention, everything else as
    measured: {target, fused_attention_ms (now), budget_ms, speedup_needed (now / budget),
    floor_share_needed and floor_share_now (per floor: floor / budget and floor / now, the share of
    the floors' rate, e.g. the multiply-add peak, at which the fused attention's work would run and
    runs; above 1 needed: out of reach)}. A budget of zero or less: out of reach, the shares None."""
    allowed = target * twin_ms - (step_ms - fused_ms)
    reachable = allowed > 0
    return {
        "target": target, "fused_attention_ms": fused_ms, "budget_ms": allowed,
        "speedup_needed": fused_ms / allowed if reachable else None,
        "floor_share_needed": {name: floor / allowed if reachable else None for name, floor in floors_ms.items()},
        "floor_share_now": {name: floor / fused_ms for name, floor in floors_ms.items()},
    }
