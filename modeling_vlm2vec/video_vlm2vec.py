"""The Qwen2-VL / Qwen2.5-VL video input built from a video's frames, without torchvision (``video_input: video``).

Hub file: imports only torch and PIL.

The official VLM2Vec-V2 code feeds a video to Qwen2-VL and Qwen2.5-VL through the backbone's video input, processed
by the *image* processor (transformers 4's ``Qwen2VLImageProcessor`` handled videos too): every frame is resized to
the size ``smart_resize`` gives the first frame (the image processor's pixel bounds), rescaled and normalised like an
image; the frame stack is padded to a multiple of ``temporal_patch_size`` by repeating its last frame; each run of
``temporal_patch_size`` consecutive frames is one temporal patch. transformers 5 moved this to a video processor that
needs torchvision; :func:`video_from_frames` builds the same tensors from the image processor's per-frame output
(which, for an image, fills every temporal slot of a patch with the image itself).
"""

from __future__ import annotations

import torch
from PIL import Image


def video_from_frames(image_processor, frames: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """A video's ``pixel_values_videos`` and ``video_grid_thw`` from its frames (in order).

    Args:
        image_processor: the backbone's Qwen-VL image processor (its ``size``, ``patch_size``, ``merge_size``,
            ``temporal_patch_size``, rescaling and normalisation apply).
        frames: the video's frames, all of one size (see :func:`frames_at_one_size`).

    Returns:
        ``pixel_values_videos`` (grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size**2) float, its
        rows ordered time step first, then the image processor's spatial order; ``video_grid_thw`` (3,) long:
        ``grid_t`` = ceil(frames / temporal_patch_size) and the grid of one frame.
    """
    processed = image_processor(images=frames, return_tensors="pt")
    _, grid_h, grid_w = processed["image_grid_thw"][0].tolist()
    slots, patch = image_processor.temporal_patch_size, image_processor.patch_size
    rows = grid_h * grid_w
    # (frames * rows, channels * slots * patch * patch): each frame's patch holds the frame in every temporal slot
    per_frame = processed["pixel_values"].reshape(len(frames), rows, -1, slots, patch, patch)[:, :, :, 0]
    padding = -len(frames) % slots
    per_frame = torch.cat([per_frame, per_frame[-1:].expand(padding, *per_frame.shape[1:])])  # last frame repeated
    grid_t = per_frame.shape[0] // slots
    video = per_frame.reshape(grid_t, slots, rows, -1, patch, patch)  # (grid_t, slots, rows, channels, p, p)
    video = video.permute(0, 2, 3, 1, 4, 5)  # (grid_t, rows, channels, slots, p, p): a patch's frames side by side
    return video.reshape(grid_t * rows, -1), torch.tensor([grid_t, grid_h, grid_w])


def frames_at_one_size(frames: list[Image.Image]) -> list[Image.Image]:
    """``frames`` with each frame whose size differs from the first frame's resized to it (bicubic), so a video's
    frames share one grid, as the official code sizes every frame by the first (transformers also stacks a video's
    frames into one array)."""
    first = frames[0].size
    return [f if f.size == first else f.resize(first, Image.Resampling.BICUBIC) for f in frames]


def process_videos(processor, videos: list[list[Image.Image]], **_) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The video tensors of ``videos`` (``pixel_values_videos`` concatenated, ``video_grid_thw`` (videos, 3)) and
    each video's token run (``processor.video_token`` once per merged patch), as a Qwen-VL processor's
    ``_process_videos`` returns them (its video keyword arguments, such as ``return_tensors``, have no effect: the
    tensors are torch)."""
    built = [video_from_frames(processor.image_processor, list(frames)) for frames in videos]
    grids = torch.stack([grid for _, grid in built])  # (videos, 3)
    merged = processor.image_processor.merge_size**2
    tensors = {"pixel_values_videos": torch.cat([pixels for pixels, _ in built]), "video_grid_thw": grids}
    return tensors, [processor.video_token * (int(grid.prod()) // merged) for grid in grids]


__all__ = ["frames_at_one_size", "process_videos", "video_from_frames"]
