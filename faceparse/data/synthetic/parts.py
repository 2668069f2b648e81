"""Drawing helpers for the synthetic faces: coordinate frames, shapes, colours, backgrounds.

Every part is a polygon in *face units* (1.0 = head height, origin at the head centre,
``+v`` down, ``+u`` towards the image's right in an unrotated face). A :class:`Frame`
maps face units to pixels, so geometry is independent of the output size, and
:meth:`Canvas.fill` rasterises one polygon twice from the same fixed-point vertices:
anti-aliased into the image, ``LINE_8`` into the label map. Later fills overwrite
earlier ones in both, which keeps the label map exact under painter's-order occlusion.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from copy import copy
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

SHIFT = 4  # fixed-point bits for OpenCV vertices: sub-pixel geometry at every size
_ONE = float(1 << SHIFT)

SKIN_TONES = np.array(
    [[255, 226, 200], [241, 194, 160], [224, 172, 130], [198, 134, 90], [160, 105, 70],
     [120, 76, 52], [84, 56, 40]], np.float32)
HAIR_TONES = np.array(
    [[22, 18, 16], [48, 34, 26], [82, 56, 38], [122, 86, 56], [165, 115, 70],
     [205, 168, 112], [228, 204, 152], [140, 62, 36], [176, 172, 166], [232, 228, 220]],
    np.float32)


def colour(c: np.ndarray) -> tuple[float, ...]:
    """OpenCV wants a plain tuple; also clips so scaled colours stay valid."""
    return tuple(np.asarray(c, np.float64).clip(0.0, 255.0).tolist())


def skin_tone(rng: np.random.Generator) -> np.ndarray:
    """A tone interpolated along a light-to-dark palette, with a small per-channel jitter."""
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    base = SKIN_TONES[i] * (i + 1 - t) + SKIN_TONES[i + 1] * (t - i)
    return base + rng.normal(0, 6, 3).astype(np.float32)


def hair_tone(rng: np.random.Generator, skin: np.ndarray) -> np.ndarray:
    """Mostly natural colours, but sometimes skin-like or dyed so colour alone cannot tell."""
    p = rng.random()
    if p < 0.72:
        base = HAIR_TONES[rng.integers(len(HAIR_TONES))]
    elif p < 0.9:
        base = skin * rng.uniform(0.7, 1.05)
    else:
        base = rng.uniform(30, 230, 3).astype(np.float32)
    return base + rng.normal(0, 8, 3).astype(np.float32)


def scene_colour(rng: np.random.Generator, skin: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """Background/clothing colour; a fair share resembles the skin or the hair on purpose."""
    p = rng.random()
    if p < 0.25:
        return skin * rng.uniform(0.75, 1.15) + rng.normal(0, 12, 3).astype(np.float32)
    if p < 0.4:
        return hair * rng.uniform(0.8, 1.2) + rng.normal(0, 12, 3).astype(np.float32)
    return rng.uniform(0, 255, 3).astype(np.float32)


class Frame:
    """Affine map from face units to pixels: rotation, scale and offset of one head or body."""

    def __init__(self, origin: Sequence[float], scale: float, angle_deg: float) -> None:
        a = np.deg2rad(angle_deg)
        self.origin = np.asarray(origin, np.float64)
        self.scale = scale
        self.angle = a
        self.m = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, np.float64) @ self.m.T + self.origin

    def compose(self, a: np.ndarray, b: np.ndarray) -> Frame:
        """The frame that first applies ``p -> a @ p + b`` in face units (e.g. a shear)."""
        out = copy(self)
        out.m, out.origin = self.m @ a, self.origin + self.m @ b
        return out


class Canvas:
    """An RGB image and its label map, drawn in lockstep from the same vertices."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.mask = np.zeros(image.shape[:2], np.uint8)

    @staticmethod
    def _fixed(polys: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.round(p * _ONE).astype(np.int32) for p in polys]

    def fill(self, polys: Sequence[np.ndarray], rgb: np.ndarray, label: int | None = None) -> None:
        """Fill pixel-space polygons (nested ones make holes); ``label=None`` paints only."""
        pts = self._fixed(polys)
        cv2.fillPoly(self.image, pts, colour(rgb), cv2.LINE_AA, SHIFT)
        if label is not None:
            cv2.fillPoly(self.mask, pts, label, cv2.LINE_8, SHIFT)

    def strokes(self, lines: np.ndarray, rgb: np.ndarray, width: float) -> None:
        """Image-only open polylines, ``(n, points, 2)`` pixels (hair strands, creases)."""
        pts = np.round(lines * _ONE).astype(np.int32)
        cv2.polylines(self.image, list(pts), False, colour(rgb), max(1, round(width)),
                      cv2.LINE_AA, SHIFT)

    @contextmanager
    def clipped(self, label: int) -> Iterator[None]:
        """Image drawing inside the block only sticks where the label map equals ``label``."""
        before = self.image.copy()
        yield
        cv2.copyTo(before, (self.mask != label).view(np.uint8), self.image)

    @contextmanager
    def blended(self, alpha: float) -> Iterator[None]:
        """Image drawing inside the block is mixed with what was there (tinted lenses)."""
        before = self.image.copy()
        yield
        cv2.addWeighted(before, 1.0 - alpha, self.image, alpha, 0.0, dst=self.image)


@lru_cache(maxsize=32)
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0,
            n: int = 32, power: float = 2.0) -> np.ndarray:
    """Closed (super)ellipse polygon; ``power`` > 2 gives rounded rectangles."""
    unit = _unit_circle(n)
    if power != 2.0:
        unit = np.sign(unit) * np.abs(unit) ** (2.0 / power)
    ca, sa = np.cos(angle), np.sin(angle)
    return unit * [rx, ry] @ np.array([[ca, sa], [-sa, ca]]) + [cx, cy]


def band(x: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Polygon between two curves sampled at the same ``x`` (lips, brows, eyelids)."""
    n = len(x)
    out = np.empty((2 * n, 2))
    out[:n, 0], out[:n, 1], out[n:, 0], out[n:, 1] = x, top, x[::-1], bottom[::-1]
    return out


def clamp_into(pts: np.ndarray, x: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Clip a shape to the region between two curves (iris inside the eye opening)."""
    out = np.empty_like(pts)
    out[:, 0] = np.minimum(np.maximum(pts[:, 0], x[0]), x[-1])
    lo, hi = np.interp(out[:, 0], x, top), np.interp(out[:, 0], x, bottom)
    out[:, 1] = np.minimum(np.maximum(pts[:, 1], lo), hi)
    return out


def background(rng: np.random.Generator, size: int, skin: np.ndarray,
               hair: np.ndarray) -> np.ndarray:
    """Smooth gradient or colour clouds, plus stripes or blobs; colours may mimic the face."""
    cells = 2 if rng.random() < 0.5 else int(rng.integers(3, 7))
    palette = np.array([scene_colour(rng, skin, hair) for _ in range(3)])
    weights = rng.dirichlet(np.full(3, 0.7), (cells, cells))
    low = np.clip(weights @ palette, 0, 255).astype(np.uint8)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    kind = rng.integers(3)
    if kind == 1:  # stripes: rotated rectangles at a random angle and period
        a, period = rng.uniform(0, np.pi), rng.uniform(0.04, 0.25) * size
        across, along = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
        offsets = np.arange(-size, size, period)[:, None, None]
        quad = np.array([[0.0, -1.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])[None]
        width = rng.uniform(0.2, 0.7) * period
        rects = size / 2 + (offsets + quad[..., :1] * width) * across + quad[..., 1:] * size * along
        cv2.fillPoly(img, list(np.round(rects * _ONE).astype(np.int32)),
                     colour(scene_colour(rng, skin, hair)), cv2.LINE_AA, SHIFT)
    elif kind == 2:  # blobs
        n = int(rng.integers(4, 12))
        centres = np.round(rng.uniform(-0.1, 1.1, (n, 2)) * size).astype(int)
        axes = np.round(rng.uniform(0.05, 0.35, (n, 2)) * size).astype(int)
        for c, ax, angle in zip(centres, axes, rng.uniform(0, 180, n), strict=True):
            cv2.ellipse(img, c.tolist(), ax.tolist(), angle, 0, 360,
                        colour(scene_colour(rng, skin, hair)), -1, cv2.LINE_AA)
    return img


@dataclass
class Face:
    """Geometry and colours shared between parts, in face units (head height = 1).

    Proportions are stylised (large eyes, thick lips and brows) so every part keeps a
    few pixels of extent even when a whole face is ~45 px tall.
    """

    a: float  # head half-width at the widest point
    jaw: float  # how much the outline narrows towards the chin
    jaw_pow: float
    yaw: float  # horizontal shift of the inner features: a cheap slight head turn
    eye_v: float
    eye_d: float  # eye centre distance from the midline
    eye_w: float  # eye half-width
    eye_up: float  # eye opening above / below its axis
    eye_lo: float
    brow_v: float
    brow_th: float
    brow_arch: float
    nose_v: float  # nose tip height
    nose_w: float
    mouth_v: float
    mouth_w: float
    lip_up: float
    lip_lo: float
    skin: np.ndarray
    hair: np.ndarray

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Face:
        u = rng.uniform
        eye_v, eye_up, brow_th = u(-0.05, 0.0), u(0.052, 0.066), u(0.06, 0.085)
        nose_v = eye_v + u(0.17, 0.21)
        skin = skin_tone(rng)
        return cls(
            a=u(0.37, 0.42), jaw=u(0.2, 0.45), jaw_pow=u(1.5, 3.0), yaw=u(-0.04, 0.04),
            eye_v=eye_v, eye_d=u(0.155, 0.18), eye_w=u(0.085, 0.1), eye_up=eye_up,
            eye_lo=u(0.04, 0.05), brow_v=eye_v - eye_up - u(0.03, 0.055) - brow_th / 2,
            brow_th=brow_th, brow_arch=u(0.0, 0.03), nose_v=nose_v, nose_w=u(0.08, 0.1),
            mouth_v=nose_v + u(0.1, 0.13), mouth_w=u(0.13, 0.17), lip_up=u(0.06, 0.078),
            lip_lo=u(0.06, 0.085), skin=skin, hair=hair_tone(rng, skin),
        )

    def outline(self, t: np.ndarray) -> np.ndarray:
        """Head contour at angles ``t`` (0 = right, pi/2 = chin): an ellipse with a tapered jaw."""
        c, s = np.cos(t), np.sin(t)
        taper = 1.0 - self.jaw * np.maximum(s, 0.0) ** self.jaw_pow
        return np.stack([self.a * c * taper, 0.5 * s], 1)

    def half_width(self, v: np.ndarray | float) -> np.ndarray:
        """Half-width of the head outline at height ``v``."""
        s = np.clip(2.0 * np.asarray(v, np.float64), -1.0, 1.0)
        taper = 1.0 - self.jaw * np.maximum(s, 0.0) ** self.jaw_pow
        return self.a * np.sqrt(1.0 - s * s) * taper

    @property
    def brow_top(self) -> float:
        return self.brow_v - self.brow_arch - 0.55 * self.brow_th

    @property
    def lip_bottom(self) -> float:
        return self.mouth_v + 0.07 + self.lip_lo  # worst case: open mouth, lip included


IRIS_TONES = np.array([[92, 60, 36], [48, 32, 22], [88, 128, 168], [92, 118, 80],
                       [122, 126, 132], [132, 100, 56]], np.float32)


def draw_ears(cv: Canvas, fr: Frame, face: Face, rng: np.random.Generator) -> None:
    """Ears go under the head fill, so only their outer part shows (7 = subject's right)."""
    v = face.eye_v + rng.uniform(0.05, 0.08)
    rx, ry = rng.uniform(0.05, 0.07), rng.uniform(0.095, 0.12)
    tone = face.skin * np.array([0.95, 0.86, 0.86]) * rng.uniform(0.9, 1.0)
    for side, label in ((-1, 7), (1, 8)):
        x = side * (face.half_width(v) - 0.005) - 0.7 * face.yaw
        tilt = side * rng.uniform(-0.25, 0.05)
        cv.fill([fr(ellipse(x, v, rx, ry, tilt))], tone, label)
        cv.fill([fr(ellipse(x + side * rx * 0.3, v, rx * 0.45, ry * 0.65, tilt))], tone * 0.72)


def draw_eyes(cv: Canvas, fr: Frame, face: Face, rng: np.random.Generator) -> np.ndarray:
    """Almond eye openings with clipped iris, pupil and lash line; returns 12+2 landmarks."""
    xn = np.linspace(-1.0, 1.0, 21)
    sclera = np.array([232, 226, 220]) * rng.uniform(0.8, 1.0) * 0.85 + face.skin * 0.15
    iris = IRIS_TONES[rng.integers(len(IRIS_TONES))] * rng.uniform(0.8, 1.2)
    lash = np.minimum(face.hair * 0.4, 45.0)
    tilt, lash_th = rng.uniform(-0.05, 0.2), rng.uniform(0.012, 0.02)
    r = face.eye_w * rng.uniform(0.42, 0.5)
    gaze = face.eye_w * rng.uniform(-0.3, 0.3, 2) * np.array([1.0, 0.3])
    ldmk_x = np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])
    layers: list[list[np.ndarray]] = [[], [], [], []]  # iris, pupil, glint, lash
    creases, eyes, pupils = [], [], []
    for side, label in ((-1, 3), (1, 4)):
        cx = side * face.eye_d + face.yaw
        x = cx + xn * face.eye_w
        lift = face.eye_v - tilt * face.eye_w * xn * side
        top = lift - face.eye_up * (1 - xn**2) ** 0.7
        bot = lift + face.eye_lo * (1 - xn**2) ** 0.9
        cv.fill([fr(band(x, top, bot))], sclera, label)
        ic = np.array([cx, face.eye_v - 0.15 * face.eye_up]) + gaze
        glint = ellipse(ic[0] + 0.35 * r, ic[1] - 0.35 * r, 0.22 * r, 0.22 * r, n=12)
        for layer, shape in zip(layers[:3], (ellipse(*ic, r, r),
                                             ellipse(*ic, 0.42 * r, 0.42 * r), glint),
                                strict=True):
            layer.append(fr(clamp_into(shape, x, top, bot)))
        layers[3].append(fr(band(x, top, np.minimum(top + lash_th, bot))))
        creases.append(fr(np.stack([x[3:-3], top[3:-3] - 0.025], 1)))
        ys = np.where(np.arange(6) < 3, np.interp(ldmk_x, xn, top), np.interp(ldmk_x, xn, bot))
        eyes.append(np.stack([cx + ldmk_x * face.eye_w, ys], 1))
        pupils.append(ic)
    for polys, tone in zip(layers, (iris, iris * 0.2, np.full(3, 245.0), lash), strict=True):
        cv.fill(polys, tone)  # both eyes at once: they never overlap
    cv.strokes(np.stack(creases), face.skin * 0.8, fr.scale * 0.008)
    return np.concatenate([*eyes, np.array(pupils)])


def draw_brows(cv: Canvas, fr: Frame, face: Face, rng: np.random.Generator) -> np.ndarray:
    """Tapered arched bands in (roughly) the hair colour; returns 10 landmarks."""
    tone = face.hair * rng.uniform(0.7, 1.0)
    t = np.linspace(0.0, 1.0, 14)
    ldmks = []
    for side, label in ((-1, 5), (1, 6)):
        inner, outer = face.eye_d - 0.8 * face.eye_w, face.eye_d + 1.25 * face.eye_w
        x = side * (inner + (outer - inner) * t) + face.yaw
        y = face.brow_v - face.brow_arch * np.sin(np.pi * t**1.35) + 0.3 * face.brow_arch * t
        half = 0.5 * face.brow_th * (1.05 - 0.45 * t**2)
        cv.fill([fr(band(x, y - half, y + half))], tone, label)
        k = np.linspace(0.0, 1.0, 5)
        pts = np.stack([np.interp(k, t, x), np.interp(k, t, y)], 1)
        ldmks.append(pts[::side])  # image left to right, as in the iBUG order
    return np.concatenate(ldmks)


def draw_nose(cv: Canvas, fr: Frame, face: Face, rng: np.random.Generator) -> np.ndarray:
    """Skin-toned nose told apart only by shading and nostrils; returns 9 landmarks."""
    top, nv, nw, bw = face.eye_v - 0.01, face.nose_v, face.nose_w, rng.uniform(0.028, 0.04)
    right = np.array([[bw, top], [bw * 1.15, nv - 0.09], [nw * 0.75, nv - 0.04],
                      [nw, nv - 0.01], [nw * 0.9, nv + 0.02], [nw * 0.55, nv + 0.035]])
    poly = np.concatenate([right, [[0.0, nv + 0.04]], right[::-1] * [-1.0, 1.0]])
    # the tip is nearer the camera, so a head turn moves it more than the bridge: a shear
    k = 0.6 * face.yaw / (nv - top)
    shear, shift = np.array([[1.0, k], [0.0, 1.0]]), np.array([face.yaw - k * top, 0.0])
    nf = fr.compose(shear, shift)
    base = face.skin * rng.uniform(0.96, 1.03)
    cv.fill([nf(poly)], base, 2)
    with cv.clipped(2):
        ridges = np.array([[[s * bw * 0.9, top + 0.03], [s * nw * 0.7, nv - 0.035]]
                           for s in (-1, 1)])
        cv.strokes(nf(ridges), base * 0.86, fr.scale * 0.02)
        cv.fill([nf(ellipse(s * nw * 0.42, nv + 0.018, nw * 0.28, 0.012, n=16))
                 for s in (-1, 1)], base * 0.42)
        cv.fill([nf(ellipse(0.0, nv - 0.015, 0.03, 0.022, n=16))], base * 1.1)
    bridge = np.stack([np.zeros(4), np.linspace(top, nv, 4)], 1)
    base_pts = np.array([[-nw * 0.55, nv + 0.03], [-nw * 0.28, nv + 0.038], [0.0, nv + 0.04],
                         [nw * 0.28, nv + 0.038], [nw * 0.55, nv + 0.03]])
    return np.concatenate([bridge, base_pts]) @ shear.T + shift


def draw_mouth(cv: Canvas, fr: Frame, face: Face, rng: np.random.Generator) -> np.ndarray:
    """Lips close to the skin colour around an optional open interior; returns 20 landmarks."""
    xn = np.linspace(-1.0, 1.0, 25)
    x = xn * face.mouth_w + 1.2 * face.yaw
    line = face.mouth_v - rng.uniform(-0.012, 0.025) * xn**2
    gap = 0.0 if rng.random() < 0.25 else rng.uniform(0.03, 0.08)
    inner = (1 - xn**2) ** 0.8
    up_in, lo_in = line - 0.35 * gap * inner, line + 0.65 * gap * inner
    bow = 1.0 - rng.uniform(0.1, 0.35) * np.exp(-((xn / 0.15) ** 2))
    up_out = up_in - face.lip_up * (1 - xn**2) ** 0.6 * bow
    lo_out = lo_in + face.lip_lo * (1 - xn**2) ** 0.7
    if rng.random() < 0.1:  # lipstick
        lip = np.array([rng.uniform(150, 220), rng.uniform(20, 60), rng.uniform(40, 90)])
    else:
        lip = face.skin * (1.0 - rng.uniform(0.15, 0.6) * np.array([0.05, 0.35, 0.3]))
    if gap > 0:
        cv.fill([fr(band(x, up_in, lo_in))], np.array([70.0, 25, 30]) * rng.uniform(0.6, 1.1), 9)
        if gap > 0.02:
            teeth = band(x, up_in, up_in + 0.45 * gap * inner)
            enamel = np.array([225.0, 220, 205]) * rng.uniform(0.8, 1.0)
            cv.fill([fr(clamp_into(teeth, x, up_in, lo_in))], enamel)
    cv.fill([fr(band(x, up_out, up_in))], lip * 0.88, 10)
    cv.fill([fr(band(x, lo_in, lo_out))], lip, 11)
    cv.strokes(fr(np.stack([x, up_in], 1)[2:-2])[None], lip * 0.55, fr.scale * 0.008)

    def at(k: np.ndarray, curve: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(k, xn, x), np.interp(k, xn, curve)], 1)

    third, half = np.array([-2, -1, 0, 1, 2]) / 3, np.array([-0.5, 0.0, 0.5])
    return np.concatenate([
        at(np.array([-1.0]), line), at(third, up_out), at(np.array([1.0]), line),
        at(third[::-1], lo_out), at(np.array([-1.0]), line), at(half, up_in),
        at(np.array([1.0]), line), at(half[::-1], lo_in)])
