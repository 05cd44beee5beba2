"""Accelerated inference on the best device present: what-if video and screening.

Everything here runs on CUDA when present and on the CPU otherwise (see
:func:`select_device`); it imports only :mod:`configs` of the project.
"""

from __future__ import annotations

from edge_accel.color import colormap_lut, rgb_to_yuv420
from edge_accel.device import DevicePreference, describe_device, select_device
from edge_accel.encode import (
    Attribution,
    EncodeError,
    H264Writer,
    VideoArtifact,
    VideoProbe,
    probe_video,
)
from edge_accel.render import render_whatif
from edge_accel.scene import (
    PairedEstimate,
    SceneGeometry,
    SignalSamples,
    VehicleSamples,
    WhatIfFrames,
    grid_geometry,
)
from edge_accel.surrogate import (
    PlanArrays,
    ScreenResult,
    SurrogateMetrics,
    SurrogateModel,
    SurrogateRow,
    candidate_features,
    load_rows_jsonl,
    load_surrogate,
    plan_arrays,
    save_surrogate,
    screen,
    spearman,
    train_surrogate,
)
from edge_accel.whatif_scene import WhatIfScene

__all__ = [
    "Attribution",
    "DevicePreference",
    "EncodeError",
    "H264Writer",
    "PairedEstimate",
    "PlanArrays",
    "SceneGeometry",
    "ScreenResult",
    "SignalSamples",
    "SurrogateMetrics",
    "SurrogateModel",
    "SurrogateRow",
    "VehicleSamples",
    "VideoArtifact",
    "VideoProbe",
    "WhatIfFrames",
    "WhatIfScene",
    "candidate_features",
    "colormap_lut",
    "describe_device",
    "grid_geometry",
    "load_rows_jsonl",
    "load_surrogate",
    "plan_arrays",
    "probe_video",
    "render_whatif",
    "rgb_to_yuv420",
    "save_surrogate",
    "screen",
    "select_device",
    "spearman",
    "train_surrogate",
]
