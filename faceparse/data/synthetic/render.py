"""Procedural synthetic portraits with exact label maps: the embedded default dataset.

Faces are drawn from OpenCV polygons, so no files or downloads are needed and every
sample is fully determined by ``(seed, index)`` via ``np.random.default_rng([seed, index])``.
Labels use Microsoft FaceSynthetics' 19 native ids::

    0 background  1 skin  2 nose  3 right_eye  4 left_eye  5 right_brow  6 left_brow
    7 right_ear  8 left_ear  9 mouth_interior  10 top_lip  11 bottom_lip  12 neck
    13 hair  14 beard  15 clothing  16 glasses  17 headwear  18 facewear

Sides are the *subject's own*: in a frontal face the subject's right eye (3), brow (5)
and ear (7) appear on the image's LEFT half (smaller x), as in FaceSynthetics.

The image is anti-aliased, the label map is not (``LINE_8``), and both come from the same
fixed-point vertices in painter's order, so labels are exact up to the boundary pixel.
Colour alone is deliberately ambiguous: lips are near the skin tone, brows and beard
share the hair colour, and backgrounds, clothing and some hair colours imitate skin.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from faceparse.data.synthetic.parts import (
    Canvas,
    Face,
    Frame,
    background,
    band,
    draw_brows,
    draw_ears,
    draw_eyes,
    draw_mouth,
    draw_nose,
    ellipse,
    scene_colour,
)

__all__ = ["render_face", "render_face_with_landmarks", "write_facesynthetics"]

HAIR_STYLES = ("short", "long", "fringe", "bun", "bald")
_STYLE_P = (0.3, 0.3, 0.15, 0.12, 0.13)


def render_face(seed: int, index: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 ``(size, size, 3)`` image and uint8 ``(size, size)`` FaceSynthetics labels."""
    image, mask, _ = render_face_with_landmarks(seed, index, size)
    return image, mask


def render_face_with_landmarks(
    seed: int, index: int, size: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`render_face`, plus ``(70, 2)`` approximate landmarks in pixels.

    Landmarks follow the iBUG 68-point order (jaw, brows, nose, eyes, mouth; image left
    to right) followed by the image-left then image-right pupil, as in FaceSynthetics.
    They are sampled from the drawing geometry, so treat them as approximate.
    """
    rng = np.random.default_rng([seed, index])
    face = Face.sample(rng)
    scale = size * rng.uniform(0.6, 0.9)  # head height in pixels
    centre = (size / 2 + rng.uniform(-0.35, 0.35) * max(size - 0.9 * scale, 0.0),
              scale / 2 + (size - scale) * rng.uniform(0.2, 0.65))
    angle = rng.uniform(-20.0, 20.0)
    head = Frame(centre, scale, angle)
    body = Frame(head(np.array([0.0, 0.5])), scale, angle * rng.uniform(0.0, 0.5))
    cv = Canvas(background(rng, size, face.skin, face.hair))

    style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=_STYLE_P)]
    back, front, ears_hidden = _hair(face, style, rng)
    neck = _clothing(cv, body, face, rng)
    _textured(cv, head, back, face.hair, 13, rng)
    _neck(cv, body, neck, face, rng)
    if not ears_hidden:
        draw_ears(cv, head, face, rng)
    cv.fill([head(face.outline(np.linspace(0, 2 * np.pi, 64, endpoint=False)))], face.skin, 1)
    if rng.random() < (0.45 if style in ("short", "bald") else 0.12):
        _textured(cv, head, [_beard(face, rng)], face.hair * rng.uniform(0.8, 1.05), 14, rng)
    ldmk_nose = draw_nose(cv, head, face, rng)
    ldmk_mouth = draw_mouth(cv, head, face, rng)
    ldmk_eyes = draw_eyes(cv, head, face, rng)
    ldmk_brows = draw_brows(cv, head, face, rng)
    _textured(cv, head, front, face.hair, 13, rng)

    accessory = rng.random()
    if accessory < 0.17:
        _glasses(cv, head, face, rng)
    elif accessory < 0.3:
        _hat(cv, head, face, rng)
    if rng.random() < 0.06:
        _chin_mask(cv, head, face, rng)

    t0 = np.arcsin(np.clip(2 * (face.eye_v + 0.05), -1, 1))
    jaw = face.outline(np.linspace(np.pi - t0, t0, 17))
    ldmks = np.concatenate([jaw, ldmk_brows, ldmk_nose, ldmk_eyes[:12], ldmk_mouth,
                            ldmk_eyes[12:]])
    return _finish(cv.image, head, face, rng), cv.mask, head(ldmks)


def write_facesynthetics(
    root: str | Path, count: int, size: int = 512, seed: int = 0, start: int = 0
) -> list[Path]:
    """Write faces ``start .. start+count-1`` in Microsoft FaceSynthetics' flat layout.

    Each index ``i`` gives ``{i:06d}.png`` (RGB image), ``{i:06d}_seg.png`` (single-channel
    ids) and ``{i:06d}_ldmks.txt`` (70 approximate ``x y`` rows); returns the image paths.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        image, mask, ldmks = render_face_with_landmarks(seed, i, size)
        path = root / f"{i:06d}.png"
        if not (cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                and cv2.imwrite(str(root / f"{i:06d}_seg.png"), mask)):
            raise OSError(f"could not write face {i} under {root}")
        np.savetxt(root / f"{i:06d}_ldmks.txt", ldmks, fmt="%.3f")
        paths.append(path)
    return paths


def _vband(v: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Polygon between two curves ``x(v)`` sampled at the same heights (side locks)."""
    return band(v, x0, x1)[:, ::-1]


def _cap(face: Face, vol: float, v_side: float, n: int = 36) -> np.ndarray:
    """Outer hair contour from the left side at height ``v_side`` over the crown to the right."""
    ry = 0.5 + 1.2 * vol
    t0 = np.pi - np.arcsin(np.clip(v_side / ry, -1, 1))
    t = np.linspace(t0, 3 * np.pi - t0, n)
    return np.stack([(face.a + vol) * np.cos(t), ry * np.sin(t)], 1)


def _hairline(face: Face, v_side: float, top: float, rng: np.random.Generator,
              jag: float = 0.0) -> np.ndarray:
    """Inner hair edge from the right sideburn across the forehead to the left sideburn."""
    xt = face.a * rng.uniform(0.62, 0.8)
    x = np.linspace(xt, -xt, 25)
    drop = rng.uniform(0.0, 0.1) if jag == 0 else rng.uniform(0.0, 0.03)
    teeth = np.abs(np.sin(np.pi * rng.integers(3, 9) * (x / xt + 1) / 2))
    y = top + drop * (x / xt) ** 4 + rng.uniform(-0.04, 0.04) * x / xt + jag * teeth
    side = face.half_width(v_side) - rng.uniform(0.03, 0.05)
    return np.concatenate([[[side, v_side]], np.stack([x, y], 1), [[-side, v_side]]])


def _hair(face: Face, style: str, rng: np.random.Generator
          ) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Back-layer polygons (behind the head), front-layer polygons, and whether ears hide."""
    u = rng.uniform
    vol = u(0.01, 0.03) if style == "bun" else u(0.025, 0.08)
    v_side = face.eye_v - u(0.0, 0.06)
    if style == "bald":  # horseshoe: only the sides above the ears
        v = np.linspace(-0.25, face.eye_v + 0.12, 10)
        hw, th = face.half_width(v), u(0.03, 0.05)
        front_v = np.linspace(-0.15, face.eye_v + 0.03, 8)
        burn = face.half_width(front_v) - 0.7 * th * np.linspace(0.2, 1.0, 8)
        back = [_vband(v, s * (hw - 0.01), s * (hw + th)) for s in (-1, 1)]
        return back, [_vband(front_v, s * face.half_width(front_v), s * burn)
                      for s in (-1, 1)], False
    if style == "fringe":
        jag = u(0.0, 0.035)
        top = face.brow_top - jag - u(0.015, 0.07)
        line = _hairline(face, v_side, top, rng, jag)
    else:
        line = _hairline(face, v_side, u(-0.42, -0.24), rng)
    front = [np.concatenate([_cap(face, vol, v_side), line])]
    back: list[np.ndarray] = []
    ears_hidden = False
    if style == "bun":
        r = u(0.09, 0.15)
        back.append(ellipse(u(-0.05, 0.05), -0.5 - u(0.0, 0.06), r, r * u(0.85, 1.0)))
    elif style == "long":
        end, flare, w = u(0.55, 1.4), u(0.0, 0.12), face.a + vol + 0.02
        tau = np.linspace(0.0, 1.0, 10)
        side = np.stack([w + flare * tau**1.5, end * tau], 1)
        x = np.linspace(w + flare, -w - flare, 12)
        hem = np.stack([x, end + u(0.0, 0.06) * np.sin(x * u(8, 20))], 1)
        back.append(np.concatenate([side[::-1] * [-1, 1], _cap(face, vol + 0.02, 0.0), side,
                                    hem]))
        ears_hidden = rng.random() < 0.6
        if ears_hidden:  # curtains from the temples over the sides of the face
            c, v_end = u(0.05, 0.08), u(0.25, 0.7)  # c beyond the sideburn's inset: no gap
            for s, (xt, vt) in ((1, line[1]), (-1, line[-2])):
                v = np.linspace(vt - 0.05, v_end, 14)
                edge = face.half_width(v_side) - c
                inner = np.where(v < v_side, np.interp(v, [vt, v_side], [abs(xt), edge]),
                                 np.maximum(face.half_width(v) - c, 0.2))
                outer = face.a + vol + flare * 0.7 * (v - v[0]) / (v[-1] - v[0])
                front.append(_vband(v, s * outer, s * inner))
    return back, front, ears_hidden


def _strands(polys: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """Slightly bent lines from near the top of each shape towards its outline: hair flow."""
    k = np.linspace(0.0, 1.0, 6)
    curves = []
    for poly in polys:
        root = poly[np.argmin(poly[:, 1])] + rng.normal(0, 0.02, 2)
        tips = poly[rng.integers(len(poly), size=n)]
        bend = rng.normal(0, 0.04, (n, 1, 2))
        lo, hi = rng.uniform(0.0, 0.5, (n, 1)), rng.uniform(0.6, 1.0, (n, 1))
        t = (lo + (hi - lo) * k)[..., None]  # a random stretch of each root-to-tip curve
        curves.append(root + t * (tips - root)[:, None] + 4 * t * (1 - t) * bend)
    return np.concatenate(curves)


def _textured(cv: Canvas, fr: Frame, polys: list[np.ndarray], tone: np.ndarray, label: int,
              rng: np.random.Generator) -> None:
    """Hair/beard: flat fill plus darker and lighter strands, kept inside the label."""
    if not polys:
        return
    for poly in polys:  # one call each: a single fillPoly would XOR the overlaps
        cv.fill([fr(poly)], tone, label)
    strands = fr(_strands(polys, rng, 28))
    with cv.clipped(label):
        cv.strokes(strands[::2], tone * 0.8 + 6, fr.scale * 0.005)
        cv.strokes(strands[1::2], tone * 1.15 + 6, fr.scale * 0.005)


def _clothing(cv: Canvas, body: Frame, face: Face, rng: np.random.Generator) -> np.ndarray:
    """Shoulders with a U or V neckline in the body frame (origin at the chin).

    Returns the matching neck polygon (pixels), drawn later so it sits on top of the hair.
    """
    u = rng.uniform
    nk, sh, sw, depth = u(0.17, 0.23), u(0.12, 0.25), u(0.7, 1.0), u(0.03, 0.3)
    x = np.linspace(-nk * 1.35, nk * 1.35, 15)
    xn = np.abs(x / x[-1])
    neckline = np.stack([x, sh + depth * (1 - (xn if rng.random() < 0.4 else xn**2))], 1)
    shoulder = np.array([[sw * 0.7, sh + 0.06], [sw, sh + 0.22], [sw * 1.05, 3.0]])
    shirt = np.concatenate([neckline, shoulder, shoulder[::-1] * [-1, 1]])
    tone = scene_colour(rng, face.skin, face.hair)
    cv.fill([body(shirt)], tone, 15)
    if rng.random() < 0.3:
        with cv.clipped(15):
            period, width = u(0.06, 0.2), u(0.2, 0.6)
            stripes = [band(np.array([-2.0, 2.0]), np.full(2, y), np.full(2, y + period * width))
                       for y in np.arange(sh - 0.1, 3.0, period)]
            cv.fill([body(p) for p in stripes], scene_colour(rng, face.skin, face.hair))
    side = np.array([[-nk, -0.35], [-nk * 1.05, sh - 0.05]])
    return body(np.concatenate([side, neckline, side[::-1] * [-1, 1]]))


def _neck(cv: Canvas, body: Frame, neck: np.ndarray, face: Face,
          rng: np.random.Generator) -> None:
    """Neck in a slightly darker skin tone with a shadow under the chin."""
    tone = face.skin * rng.uniform(0.84, 0.95)
    cv.fill([neck], tone, 12)
    for depth, shade in ((0.14, 0.93), (0.1, 0.86), (0.065, 0.8), (0.03, 0.74)):
        cv.fill([body(np.array([[-0.17, -0.3], [0.17, -0.3], [0.17, depth], [-0.17, depth]]))],
                tone * shade)


def _beard(face: Face, rng: np.random.Generator) -> np.ndarray:
    """Full beard (cheeks, chin, optional moustache) or a goatee around the mouth."""
    u = rng.uniform
    mw, nv, mv = face.mouth_w, face.nose_v, face.mouth_v
    tash = [[-mw * 0.9, nv + 0.05], [0.0, nv + 0.035], [mw * 0.9, nv + 0.05]]
    if rng.random() < 0.3:  # goatee
        chin = 0.5 + u(0.0, 0.05)
        return np.array([[-mw - 0.03, mv], *tash, [mw + 0.03, mv], [mw * 0.7, chin - 0.02],
                         [0.0, chin], [-mw * 0.7, chin - 0.02]]) + [face.yaw, 0.0]
    v0 = face.eye_v + u(0.03, 0.1)
    t0 = np.arcsin(np.clip(2 * v0, -1, 1))
    t = np.linspace(t0, np.pi - t0, 25)
    outer = face.outline(t) * 1.02 + np.stack([np.zeros_like(t), u(0.0, 0.08) * np.sin(t) ** 8], 1)
    cheek = face.half_width(v0) - u(0.04, 0.08)
    lip = tash if rng.random() < 0.7 else [[0.0, mv + face.lip_lo + 0.02]]
    inner = np.array([[-cheek, v0], [-mw - 0.05, mv - 0.04], *lip, [mw + 0.05, mv - 0.04],
                      [cheek, v0]])
    return np.concatenate([outer, inner + [face.yaw, 0.0]])


def _glasses(cv: Canvas, fr: Frame, face: Face, rng: np.random.Generator) -> None:
    """Frame rings, bridge and temple arms labelled 16; tinted lenses keep the eyes visible."""
    u = rng.uniform
    lw = min(face.eye_w + u(0.03, 0.055), face.eye_d - 0.025)  # leave room for the bridge
    lh, ft, power = max(face.eye_up, face.eye_lo) + u(0.02, 0.04), u(0.025, 0.04), u(2.0, 5.0)
    tone = np.array([[20, 20, 20], [90, 55, 30], [200, 170, 90], [180, 180, 185],
                     [150, 30, 40]][rng.integers(5)], np.float64)
    cy, hinge = face.eye_v - 0.005, face.eye_v - 0.005 - 0.35 * lh
    centres = [s * face.eye_d + face.yaw for s in (-1, 1)]
    with cv.blended(u(0.05, 0.3)):
        cv.fill([fr(ellipse(cx, cy, lw, lh, power=power)) for cx in centres],
                rng.uniform(0, 255, 3))
    for s, cx in zip((-1, 1), centres, strict=True):
        cv.fill([fr(ellipse(cx, cy, lw + ft / 2, lh + ft / 2, power=power)),
                 fr(ellipse(cx, cy, lw - ft / 2, lh - ft / 2, power=power))], tone, 16)
        x = np.array([cx + s * lw, s * face.half_width(cy)])
        y = np.array([hinge, cy - 0.01])  # temple arm, from the hinge back to the ear
        cv.fill([fr(band(x, y - 0.4 * ft, y + 0.4 * ft))], tone, 16)
    x = np.array([centres[0] + lw, centres[1] - lw])
    cv.fill([fr(band(x, np.full(2, hinge - ft / 2), np.full(2, hinge + ft / 2)))], tone, 16)


def _hat(cv: Canvas, fr: Frame, face: Face, rng: np.random.Generator) -> None:
    """Beanie, cap or brimmed hat whose lower edge always stays above the brows."""
    u = rng.uniform
    tone = scene_colour(rng, face.skin, face.hair)
    kind = rng.integers(3)
    brim_h = 0.0 if kind == 0 else u(0.04, 0.08)
    edge = min(u(-0.34, -0.22), face.brow_top - 0.02 - brim_h)
    rx = face.a + u(0.06, 0.1) if kind < 2 else face.a * u(0.85, 0.95)
    t = np.linspace(np.pi, 2 * np.pi, 30)
    dome = np.stack([rx * np.cos(t), edge + (0.5 + edge + u(0.08, 0.2)) * np.sin(t)], 1)
    cv.fill([fr(dome)], tone, 17)
    if kind == 0:  # folded band of a beanie
        cv.fill([fr(band(np.array([-rx, rx]), np.full(2, edge - 0.08), np.full(2, edge)))],
                tone * 0.8)
    else:  # cap visor or hat brim, seen from the front as a flat lower half-ellipse
        wide = face.a * (u(0.8, 0.95) if kind == 1 else u(1.4, 1.9))
        brim = ellipse(1.5 * face.yaw, edge, wide, brim_h)
        cv.fill([fr(brim[brim[:, 1] >= edge - 1e-9] if kind == 1 else brim)], tone * 0.85, 17)


def _chin_mask(cv: Canvas, fr: Frame, face: Face, rng: np.random.Generator) -> None:
    """A face mask pulled down under the lips (facewear, 18) that leaves the mouth visible."""
    top = face.lip_bottom + rng.uniform(0.01, 0.04)
    t0 = np.arcsin(np.clip(2 * top, -1, 1))
    poly = face.outline(np.linspace(t0, np.pi - t0, 20)) * 1.03
    tone = np.array([[150, 190, 225], [235, 235, 235], [30, 30, 35]][rng.integers(3)], float)
    cv.fill([fr(poly)], tone * rng.uniform(0.8, 1.0), 18)


@lru_cache(maxsize=4)
def _noise_pool(size: int) -> np.ndarray:
    """Fixed unit Gaussian noise, twice the image size; each face reads a random window.

    Drawing fresh noise for every face would cost more than drawing the face itself.
    """
    return np.random.default_rng(0).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)


@lru_cache(maxsize=4)
def _coarse_grid(size: int, cells: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of a coarse grid whose upsampling covers the image exactly."""
    g = min(size, cells)
    ys, xs = (np.mgrid[0:g, 0:g] + 0.5) * (size / g) - 0.5
    return xs, ys


def _finish(image: np.ndarray, head: Frame, face: Face, rng: np.random.Generator) -> np.ndarray:
    """Soft focus, rounded head shading, a directional light ramp, colour cast and noise.

    The smooth gain is computed on a coarse grid and upsampled, which is what keeps this cheap.
    """
    size = image.shape[0]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 0.9) * size / 128)
    xs, ys = _coarse_grid(size)
    dx, dy = xs - head.origin[0], ys - head.origin[1]
    c, s = np.cos(head.angle) / head.scale, np.sin(head.angle) / head.scale
    light = rng.uniform(-0.2, 0.2, 2)
    r2 = ((dx * c + dy * s - light[0]) / face.a) ** 2 + ((dy * c - dx * s - light[1]) / 0.5) ** 2
    gain = 1.0 - rng.uniform(0.1, 0.3) * np.minimum(r2, 1.0) ** 1.5
    phi = rng.uniform(0, 2 * np.pi)
    ramp = (dx * np.cos(phi) + dy * np.sin(phi)) / size
    gain *= rng.uniform(0.75, 1.15) + rng.uniform(0, 0.5) * ramp
    gain3 = (gain[..., None] * rng.uniform(0.9, 1.1, 3)).astype(np.float32)
    out = image * cv2.resize(gain3, (size, size), interpolation=cv2.INTER_LINEAR)
    y, x = rng.integers(0, size + 1, 2)
    out += _noise_pool(size)[y:y + size, x:x + size] * np.float32(rng.uniform(2.0, 9.0))
    return np.clip(out, 0, 255, out=out).astype(np.uint8)
