"""Slicing processed groups into row chunks (GradCache) and joining groups into one batch — backbone-aware.

A *group* is what the training collator makes of ``B`` rows: the ``Vlm2VecProcessor`` output — ``input_ids`` /
``attention_mask`` (B, L), possibly more (B, L) tensors (``mm_token_type_ids``) and image tensors — plus
``num_images`` (B,), which :func:`model_inputs` removes before a forward pass. Image tensors are laid out one of three
ways, recognised by their keys:

* **patches** (Qwen2-VL, Qwen2.5-VL; ``image_grid_thw`` present): ``pixel_values`` (sum of patches, D) flattened over
  images, image ``k`` owning ``prod(image_grid_thw[k])`` consecutive rows; ``image_grid_thw`` (n_images, 3).
* **rows** (Idefics3 / SmolVLM; ``pixel_attention_mask`` present): ``pixel_values`` (B, max_images, 3, H, W) and
  ``pixel_attention_mask`` (B, max_images, H, W) indexed by row; text-only rows hold all-zero images.
* **images** (LLaVA-Next and other per-image processors): ``pixel_values`` (n_images, ...) and ``image_sizes``
  (n_images, 2) indexed by image.

Row ``b`` owns ``num_images[b]`` images, in row order. Pixel keys are dropped from a chunk without images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PIXEL_KEYS = ("pixel_values", "image_sizes", "image_grid_thw", "pixel_attention_mask")


def model_inputs(group: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's keyword inputs of a group or chunk: everything but the ``num_images`` slicing metadata."""
    return {k: v for k, v in group.items() if k != "num_images"}


def group_rows(group: dict[str, torch.Tensor]) -> int:
    """Number of rows ``B`` of a group."""
    return group["attention_mask"].shape[0]


def _image_layout(group: dict[str, torch.Tensor]) -> str:
    if "image_grid_thw" in group:
        return "patches"
    if "pixel_attention_mask" in group:
        return "rows"
    return "images"


def _is_sequence(key: str, value: torch.Tensor, rows: int, length: int) -> bool:
    return key not in PIXEL_KEYS and value.dim() >= 2 and value.shape[0] == rows and value.shape[1] == length


def split_group(
    group: dict[str, torch.Tensor], chunk_size: int, padding_side: str = "right"
) -> list[dict[str, torch.Tensor]]:
    """Cut a group into chunks of ``chunk_size`` consecutive rows (the last may be shorter).

    Every chunk is a valid model input on its own: row tensors and the rows' images are sliced out (views, no copy),
    and padding columns that are all-zero in the chunk's ``attention_mask`` are trimmed on ``padding_side``
    (trailing for ``"right"``, leading for ``"left"``). Real tokens of a row must be contiguous (as processors pad).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    rows, length = group["attention_mask"].shape
    if chunk_size >= rows:
        return [group]
    n_chunks = -(-rows // chunk_size)
    bounds = list(range(0, rows, chunk_size)) + [rows]
    # one host transfer for all chunk boundaries: chunk lengths, image bounds, patch bounds
    row_lengths = group["attention_mask"].sum(-1)  # (B,)
    chunk_lengths = F.pad(row_lengths, (0, n_chunks * chunk_size - rows)).view(n_chunks, chunk_size).amax(-1)
    image_cum = F.pad(group["num_images"].to(row_lengths.device).cumsum(0), (1, 0))  # (B + 1,)
    image_bounds = image_cum[bounds]  # (n_chunks + 1,)
    meta = [chunk_lengths, image_bounds]
    layout = _image_layout(group)
    if layout == "patches":
        patch_cum = F.pad(group["image_grid_thw"].prod(-1).cumsum(0), (1, 0)).to(row_lengths.device)
        meta.append(patch_cum[image_bounds])
    flat = torch.cat(meta).tolist()
    chunk_lengths, image_bounds, patch_bounds = (
        flat[:n_chunks],
        flat[n_chunks : 2 * n_chunks + 1],
        flat[2 * n_chunks + 1 :],
    )

    chunks = []
    for c in range(n_chunks):
        lo, hi, keep = bounds[c], bounds[c + 1], chunk_lengths[c]
        columns = slice(0, keep) if padding_side == "right" else slice(length - keep, length)
        chunk = {}
        for key, value in group.items():
            if key in PIXEL_KEYS:
                continue
            value = value[lo:hi]
            chunk[key] = value[:, columns] if _is_sequence(key, value, hi - lo, length) else value
        first_image, last_image = image_bounds[c], image_bounds[c + 1]
        if last_image > first_image:
            if layout == "patches":
                chunk["pixel_values"] = group["pixel_values"][patch_bounds[c] : patch_bounds[c + 1]]
                chunk["image_grid_thw"] = group["image_grid_thw"][first_image:last_image]
            else:
                image_slice = slice(lo, hi) if layout == "rows" else slice(first_image, last_image)
                chunk.update({k: group[k][image_slice] for k in PIXEL_KEYS if k in group})
        chunks.append(chunk)
    return chunks


def _pad_to(tensor: torch.Tensor, shape: list[int], value: float, left_dim1: bool = False) -> torch.Tensor:
    """Pad dims 1.. of ``tensor`` at their end (dim 1 at its start when ``left_dim1``) up to ``shape``."""
    pad = []
    for dim in range(tensor.dim() - 1, 0, -1):
        missing = shape[dim] - tensor.shape[dim]
        pad += [missing, 0] if (dim == 1 and left_dim1) else [0, missing]
    return F.pad(tensor, pad, value=value) if any(pad) else tensor


def concat_groups(
    groups: list[dict[str, torch.Tensor]], padding_side: str = "right", pad_token_id: int = 0
) -> dict[str, torch.Tensor]:
    """Join groups into one batch (rows in order), the inverse of :func:`split_group`.

    Sequence tensors are re-padded to the longest group on ``padding_side`` (``input_ids`` with ``pad_token_id``,
    the rest with 0). Image tensors are concatenated in row order; per-image tensors of different sizes are
    zero-padded at their end (as processors pad tiles and pixels), per-row images of text-only groups are zeros.
    """
    if len(groups) == 1:
        return groups[0]
    length = max(g["attention_mask"].shape[1] for g in groups)
    row_keys = [k for k in groups[0] if k not in PIXEL_KEYS]
    out = {}
    for key in row_keys:
        parts = []
        for g in groups:
            value = g[key]
            if _is_sequence(key, value, group_rows(g), g["attention_mask"].shape[1]):
                fill = pad_token_id if key == "input_ids" else 0
                value = _pad_to(value, [0, length, *value.shape[2:]], fill, left_dim1=padding_side == "left")
            parts.append(value)
        out[key] = torch.cat(parts)
    with_images = [g for g in groups if "pixel_values" in g]
    if not with_images:
        return out
    for key in (k for k in PIXEL_KEYS if k in with_images[0]):
        shape = [max(g[key].shape[d] for g in with_images) for d in range(with_images[0][key].dim())]
        if _image_layout(with_images[0]) == "rows":
            parts = [
                _pad_to(g[key], shape, 0)
                if key in g
                else g["attention_mask"].new_zeros(group_rows(g), *shape[1:], dtype=with_images[0][key].dtype)
                for g in groups
            ]
        else:
            parts = [_pad_to(g[key], shape, 0) for g in with_images]
        out[key] = torch.cat(parts)
    return out


def with_vision_filler(
    group: dict[str, torch.Tensor], filler: dict[str, torch.Tensor], padding_side: str = "right", pad_token_id: int = 0
) -> dict[str, torch.Tensor]:
    """``group`` (or chunk) without images, with the one-row ``filler`` group (holding one image) appended as its last
    row, so a forward of the result runs the vision tower. Callers keep the filler row's embedding out of the loss
    (it only has to reach the graph, with a zero gradient)."""
    if "pixel_values" in group:
        raise ValueError("with_vision_filler: the group already holds images")
    return concat_groups([group, filler], padding_side, pad_token_id=pad_token_id)


__all__ = ["PIXEL_KEYS", "concat_groups", "group_rows", "model_inputs", "split_group", "with_vision_filler"]
