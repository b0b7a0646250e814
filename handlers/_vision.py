"""Image decoding (Pillow) and tensor transforms (torch) shared by the vision handlers.

A helper module: it is not a handler. Pillow and torch are imported inside the functions, so
importing this module costs nothing.

Transforms follow the usual ImageNet recipe: resize the shorter side (bilinear, in Pillow), then
convert to a float tensor in [0, 1] laid out ``[C, H, W]``, centre-crop (zero padding when the image
is smaller than the crop) and normalise with a per-channel mean and standard deviation.
"""
from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from typing import Any, Optional, Sequence

from ._common import BatchHandler, RequestError, request_payload, size_pair

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}

#: sentinel: "use Pillow's default limit" (Image.MAX_IMAGE_PIXELS at import time)
DEFAULT_LIMIT = object()


class ImageError(RequestError):
    """The request's image cannot be used (answered 400 with the reason)."""


def require_pillow(who: str) -> Any:
    """``PIL.Image``, or a load error that says what to install."""
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeError(f"{who} needs Pillow to decode images: pip install 'pillow>=10'") from None
    return Image


# -- payload -> bytes -> PIL image ----------------------------------------------------------------

def image_bytes(value: Any) -> bytes:
    """Raw bytes as they are; a str (text/JSON body) is base64 (a ``data:`` URL prefix is allowed);
    a JSON object's ``data``/``image``/``b64`` field is looked up."""
    if isinstance(value, dict):
        for key in ("data", "image", "b64"):
            if key in value:
                return image_bytes(value[key])
        raise ImageError("JSON body must be a base64 string or an object with a `data` field holding one")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        text = "".join(text.split())
        if not text:
            raise ImageError("empty request body: expected an image")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("request body is text but not base64-encoded image bytes") from None
    elif value is None:
        raw = b""
    else:
        raise ImageError(f"expected image bytes or a base64 string, got {type(value).__name__}")
    if not raw:
        raise ImageError("empty request body: expected an image")
    return raw


def open_image(raw: bytes, max_pixels: Optional[int] = None, formats: Optional[Sequence[str]] = None,
               mode: Optional[str] = "RGB") -> Any:
    """Decode ``raw`` fully; every way it can be bad becomes :class:`ImageError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=list(formats) if formats else None)
            width, height = img.size
            if max_pixels and width * height > max_pixels:
                raise ImageError(f"image too large: {width}x{height} = {width * height} pixels "
                                 f"exceeds the limit of {max_pixels} pixels")
            img.load()
            if mode and img.mode != mode:
                img = img.convert(mode)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        allowed = f" (accepted formats: {', '.join(formats)})" if formats else ""
        raise ImageError(f"request body is not a valid image: cannot identify the image format{allowed}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as exc:
        raise ImageError(f"invalid or truncated image: {exc}") from None
    return img


# -- PIL image -> tensor transforms ---------------------------------------------------------------

def resize(img: Any, size: Optional[tuple[int, int]], shorter_side: bool = True) -> Any:
    """Shorter side to ``size[0]`` keeping the aspect ratio, or exactly ``(height, width)``."""
    from PIL import Image

    if size is None:
        return img
    width, height = img.size
    if shorter_side:
        target = size[0]
        if width <= height:
            new_w, new_h = target, int(target * height / width)
        else:
            new_w, new_h = int(target * width / height), target
    else:
        new_h, new_w = size
    if (new_w, new_h) == (width, height):
        return img
    return img.resize((max(new_w, 1), max(new_h, 1)), Image.BILINEAR)


def to_tensor(img: Any) -> Any:
    """PIL image (L, LA, RGB or RGBA) -> float tensor ``[C, H, W]`` in [0, 1]."""
    import torch

    channels = _CHANNELS.get(img.mode)
    if channels is None:
        img = img.convert("RGB")
        channels = 3
    width, height = img.size
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(height, width, channels).permute(2, 0, 1).float().div_(255.0)


def center_crop(tensor: Any, size: Optional[tuple[int, int]]) -> Any:
    """Crop the centre ``(height, width)``; pad with zeros first where the image is smaller."""
    import torch.nn.functional as F

    if size is None:
        return tensor
    crop_h, crop_w = size
    height, width = tensor.shape[-2:]
    if crop_h > height or crop_w > width:
        pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
        tensor = F.pad(tensor, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        height, width = tensor.shape[-2:]
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return tensor[..., top:top + crop_h, left:left + crop_w]


def normalize(tensor: Any, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> Any:
    import torch

    if mean is None and std is None:
        return tensor
    channels = tensor.shape[0]
    m = torch.as_tensor(mean if mean is not None else [0.0] * channels, dtype=tensor.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std if std is not None else [1.0] * channels, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - m) / s


class ImageTransform:
    """PIL image -> normalised tensor. Callable, so it also serves as a TorchServe ``image_processing``.

    ``resize``: shorter side in pixels (int), exact ``[height, width]``, or None;
    ``crop``: centre crop size (int or ``[height, width]``) or None;
    ``mean``/``std``: per-channel lists (or None: no normalisation); ``mode``: the Pillow mode
    images are converted to first (``RGB``, ``L`` ...; None keeps the image's own mode).
    """

    def __init__(self, resize: Any = 256, crop: Any = 224, mean: Optional[Sequence[float]] = IMAGENET_MEAN,
                 std: Optional[Sequence[float]] = IMAGENET_STD, mode: Optional[str] = "RGB") -> None:
        self.shorter_side = not isinstance(resize, (list, tuple))
        self.resize = size_pair(resize, "resize")
        self.crop = size_pair(crop, "crop")
        if mode is not None and mode not in _CHANNELS:
            raise ValueError(f"handler.color_mode must be one of {sorted(_CHANNELS)}, got {mode!r}")
        self.mode = mode
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and (not isinstance(values, (list, tuple)) or not values
                                       or not all(isinstance(v, (int, float)) for v in values)):
                raise ValueError(f"handler.{name} must be a list of numbers or null, got {values!r}")
        if std is not None and any(v == 0 for v in std):
            raise ValueError("handler.std must not contain 0")
        if mode is not None:
            for name, values in (("mean", mean), ("std", std)):
                if values is not None and len(values) not in (1, _CHANNELS[mode]):
                    raise ValueError(f"handler.{name} has {len(values)} values; color_mode {mode} "
                                     f"has {_CHANNELS[mode]} channels")
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None

    def __call__(self, img: Any) -> Any:
        if self.mode and img.mode != self.mode:
            img = img.convert(self.mode)
        img = resize(img, self.resize, self.shorter_side)
        tensor = center_crop(to_tensor(img), self.crop)
        return normalize(tensor, self.mean, self.std)

    def describe(self) -> dict[str, Any]:
        return {"resize": (self.resize[0] if self.shorter_side else list(self.resize)) if self.resize else None,
                "crop": list(self.crop) if self.crop else None, "mean": self.mean, "std": self.std,
                "color_mode": self.mode}


def pixel_limit(config_value: Any, limit_enabled: bool = True) -> Optional[int]:
    """The configured pixel limit: Pillow's default, a positive int, or None (0/null/false: unlimited)."""
    from PIL import Image

    if not limit_enabled:
        return None
    if config_value is DEFAULT_LIMIT:
        return Image.MAX_IMAGE_PIXELS
    if config_value in (None, 0, False):
        return None
    if isinstance(config_value, bool) or not isinstance(config_value, int) or config_value < 0:
        raise ValueError(f"handler.max_image_pixels must be a positive integer or null, got {config_value!r}")
    return config_value


# -- the vision handler base ----------------------------------------------------------------------

class VisionBase(BatchHandler):
    """Decode each request's image, transform it; the batch is stacked per image shape.

    ``handler:`` keys: ``resize``, ``crop``, ``mean``, ``std``, ``color_mode``, ``max_image_pixels``,
    ``image_formats`` (see docs/handlers.md). Subclasses set the class defaults below.
    """

    default_resize: Any = 256
    default_crop: Any = 224
    default_mean: Optional[Sequence[float]] = IMAGENET_MEAN
    default_std: Optional[Sequence[float]] = IMAGENET_STD

    def initialize(self, context: Any) -> None:
        Image = require_pillow(f"the {self.handler_name} handler")
        super().initialize(context)
        cfg = self.config
        self.transform = ImageTransform(
            resize=cfg.get("resize", self.default_resize), crop=cfg.get("crop", self.default_crop),
            mean=cfg.get("mean", self.default_mean), std=cfg.get("std", self.default_std),
            mode=cfg.get("color_mode", "RGB"))
        limit_enabled = bool(context.system_properties.get("limit_max_image_pixels", True))
        self.max_pixels = pixel_limit(cfg.get("max_image_pixels", DEFAULT_LIMIT), limit_enabled)
        # Pillow raises DecompressionBombError beyond twice its global limit: keep that from
        # undercutting a larger configured limit (one model per worker process).
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        formats = cfg.get("image_formats")
        if formats is not None and (not isinstance(formats, list) or not all(isinstance(f, str) for f in formats)):
            raise ValueError(f"handler.image_formats must be a list of Pillow format names, got {formats!r}")
        self.formats = [f.upper() for f in formats] if formats else None

    def effective_config(self) -> dict[str, Any]:
        out = dict(self.config)
        out.update(self.transform.describe())
        out["max_image_pixels"] = self.max_pixels
        out["image_formats"] = self.formats
        return out

    def decode(self, row: Any) -> Any:
        """The request's image as a PIL image (already in ``color_mode``)."""
        raw = image_bytes(request_payload(row))
        return open_image(raw, self.max_pixels, self.formats, self.transform.mode)

    def preprocess_one(self, row: Any, idx: int) -> Any:
        import torch

        value = request_payload(row)
        if isinstance(value, list):  # an already preprocessed image, as nested lists [C][H][W]
            try:
                tensor = torch.tensor(value, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise RequestError(f"a JSON array input must be a numeric [C][H][W] array: {exc}") from None
            if tensor.dim() != 3:
                raise RequestError(f"a JSON array input must be [C][H][W]; got {tensor.dim()} dimensions")
            return tensor
        return self.transform(self.decode(row))
