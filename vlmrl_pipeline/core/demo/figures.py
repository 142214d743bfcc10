"""The synthetic set's figures, drawn with PIL: each family draws a problem and returns (spec, image).

Each family draws all its random numbers first (so answers do not depend on the image size), then renders at the
requested size from a 128 px design grid. ``FAMILIES`` are MathVista-like problems (bar chart, counting coloured
shapes, rectangle with labelled sides, triangle with two labelled angles, number line with a dot);
``READABLE_FAMILIES`` are the two a 1 M-parameter model can learn to read in a minute of CPU.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw, ImageFont

_COLOURS = {
    "red": (215, 40, 40),
    "blue": (40, 90, 215),
    "green": (30, 150, 60),
    "orange": (240, 145, 20),
    "purple": (135, 60, 175),
}
_BAR_NAMES = ["cat", "dog", "fox", "owl", "bee", "ant", "elk", "yak"]
_BLACK = (0, 0, 0)
_WHITE = (255, 255, 255)


# --------------------------------------------------------------------------- helpers


class _Canvas:
    """An RGB image plus a font and a scale factor; figures are designed at 128 px."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.k = size / 128.0
        self.image = Image.new("RGB", (size, size), _WHITE)
        self.draw = ImageDraw.Draw(self.image)
        self.font = _default_font(max(8, round(11 * self.k)))
        self.line = max(1, round(self.k))

    def p(self, v: float) -> int:
        """Scale a coordinate from the 128 px design grid to this canvas."""
        return round(v * self.k)

    def text(self, xy: tuple[float, float], s: str, anchor: str = "mm", fill=_BLACK) -> None:
        x, y = xy
        try:
            self.draw.text((x, y), s, fill=fill, font=self.font, anchor=anchor)
        except ValueError:  # bitmap fallback font: anchors unsupported
            w, h = self.text_size(s)
            self.draw.text((x - w / 2, y - h / 2), s, fill=fill, font=self.font)

    def text_size(self, s: str) -> tuple[int, int]:
        left, top, right, bottom = self.draw.textbbox((0, 0), s, font=self.font)
        return right - left, bottom - top


def _default_font(size: int):
    # PIL's built-in font; Pillow >= 10.1 with FreeType can scale it, older ones cannot.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if decimals else str(int(round(value)))


def _numeric_choices(
    rng: random.Random, answer: float, step: float, decimals: int, lowest: float
) -> list[str]:
    """Four distinct numeric choice texts, one of them the answer, shuffled."""
    offsets = [o for o in range(-4, 5) if o != 0]
    rng.shuffle(offsets)
    picked = [answer]
    for o in offsets:
        v = round(answer + o * step, 6)
        if v >= lowest and _fmt(v, decimals) not in {_fmt(x, decimals) for x in picked}:
            picked.append(v)
        if len(picked) == 4:
            break
    texts = [_fmt(v, decimals) for v in picked]
    rng.shuffle(texts)
    return texts


def _spec(question: str, answer: str, **kw: Any) -> dict[str, Any]:
    spec = {
        "question": question,
        "answer": answer,
        "choices": None,
        "unit": None,
        "precision": None,
        "question_type": "free_form",
        "answer_type": "integer",
        "category": "math-targeted-vqa",
        "grade": "elementary school",
    }
    spec.update(kw)
    return spec


def _as_multi_choice(spec: dict[str, Any], choices: list[str]) -> dict[str, Any]:
    # MathVista: a multi_choice row's answer is the choice text and its answer_type is "text".
    assert spec["answer"] in choices
    spec.update(choices=choices, question_type="multi_choice", answer_type="text", precision=None)
    return spec


# --------------------------------------------------------------------------- families
# Each family draws all its random numbers first (so answers do not depend on the
# image size), then renders, and returns (spec, image).


def _bar_chart(rng: random.Random, variant: str, size: int):
    n = rng.randint(3, 4)
    names = rng.sample(_BAR_NAMES, n)
    values = rng.sample(range(1, 11), n)  # distinct, so "tallest" is unique
    colours = rng.sample(list(_COLOURS.values()), n)
    common = dict(context="bar chart", task="figure question answering", skills=["statistical reasoning"])
    tallest = names[values.index(max(values))]
    if variant in ("mc_text", "free_text"):
        spec = _spec("Which bar has the largest value?", tallest, answer_type="text", **common)
        if variant == "mc_text":
            _as_multi_choice(spec, list(names))
    else:
        i, j = rng.sample(range(n), 2)
        if variant == "free_num" and rng.random() < 0.5:
            hi, lo = (i, j) if values[i] > values[j] else (j, i)
            spec = _spec(
                f"How much larger is the value of bar {names[hi]} than the value of bar {names[lo]}?",
                str(values[hi] - values[lo]),
                **{**common, "skills": ["statistical reasoning", "arithmetic reasoning"]},
            )
        else:
            spec = _spec(f"What is the value of bar {names[i]}?", str(values[i]), **common)
            if variant == "mc_num":
                _as_multi_choice(spec, _numeric_choices(rng, values[i], 1, 0, 0))

    c = _Canvas(size)
    left, right, base, top = c.p(16), c.p(122), c.p(104), c.p(18)
    unit_h = (base - top) / 10
    c.draw.line([(left, top - c.p(6)), (left, base)], fill=_BLACK, width=c.line)
    c.draw.line([(left, base), (right, base)], fill=_BLACK, width=c.line)
    for t in (0, 5, 10):
        y = base - t * unit_h
        c.draw.line([(left - c.p(3), y), (left, y)], fill=_BLACK, width=c.line)
        c.text((left - c.p(4), y), str(t), anchor="rm")
    slot = (right - left) / n
    for k, (name, v, col) in enumerate(zip(names, values, colours)):
        cx = left + slot * (k + 0.5)
        half = slot * 0.3
        c.draw.rectangle([(cx - half, base - v * unit_h), (cx + half, base)], fill=col, outline=_BLACK)
        c.text((cx, base - v * unit_h - c.p(2)), str(v), anchor="mb")
        c.text((cx, base + c.p(3)), name, anchor="mt")
    return spec, c.image


def _counting(rng: random.Random, variant: str, size: int):
    names = list(_COLOURS)
    target = rng.choice(names)
    others = rng.sample([x for x in names if x != target], rng.randint(1, 2))
    counts = {target: rng.randint(1, 7)}
    for o in others:
        counts[o] = rng.randint(1, 4)
    if variant in ("mc_text", "free_text"):
        # make the majority colour unique
        top = max(counts.values())
        if list(counts.values()).count(top) > 1:
            counts[target] = top + 1
    cells = rng.sample(range(16), sum(counts.values()))
    shapes = []
    it = iter(cells)
    for colour, k in counts.items():
        for _ in range(k):
            shapes.append((next(it), colour, rng.choice(["circle", "square", "triangle"])))
    common = dict(context="synthetic scene", task="math word problem", skills=["arithmetic reasoning"])
    total = sum(counts.values())
    if variant in ("mc_text", "free_text"):
        majority = max(counts, key=counts.get)
        if variant == "free_text":
            spec = _spec("Which colour do most of the shapes have?", majority, answer_type="text", **common)
        else:
            spec = _spec("Which colour do most of the shapes have?", majority, **common)
            extra = [x for x in names if x not in counts]
            choices = list(counts) + extra[: max(0, 4 - len(counts))]
            rng.shuffle(choices)
            _as_multi_choice(spec, choices)
    else:
        form = rng.randint(0, 2)
        if form == 0:
            spec = _spec(f"How many {target} shapes are there?", str(counts[target]), **common)
        elif form == 1:
            spec = _spec("How many shapes are there in total?", str(total), **common)
        else:
            spec = _spec(
                f"Subtract all {target} shapes. How many shapes are left?", str(total - counts[target]), **common
            )
        if variant == "mc_num":
            _as_multi_choice(spec, _numeric_choices(rng, int(spec["answer"]), 1, 0, 0))

    c = _Canvas(size)
    cell = (128 - 16) / 4
    r = c.p(cell * 0.34)
    for idx, colour, shape in shapes:
        cx = c.p(8 + cell * (idx % 4 + 0.5))
        cy = c.p(8 + cell * (idx // 4 + 0.5))
        col = _COLOURS[colour]
        if shape == "circle":
            c.draw.ellipse([(cx - r, cy - r), (cx + r, cy + r)], fill=col, outline=_BLACK)
        elif shape == "square":
            c.draw.rectangle([(cx - r, cy - r), (cx + r, cy + r)], fill=col, outline=_BLACK)
        else:
            c.draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=col, outline=_BLACK)
    return spec, c.image


def _rectangle(rng: random.Random, variant: str, size: int):
    common = dict(
        context="geometry diagram",
        task="geometry problem solving",
        skills=["geometry reasoning", "arithmetic reasoning"],
    )
    use_float = variant == "free_num" and rng.random() < 0.3
    if use_float:
        # sides in tenths; the perimeter is exact in tenths too (no float rounding)
        w10, h10 = rng.randint(15, 95), rng.randint(15, 95)
        p10 = 2 * (w10 + h10)
        w_txt, h_txt = f"{w10 / 10:.1f}", f"{h10 / 10:.1f}"
        spec = _spec(
            "What is the perimeter of the rectangle?",
            f"{p10 // 10}.{p10 % 10}",
            unit="cm",
            precision=1.0,
            answer_type="float",
            **common,
        )
        w_rel, h_rel = w10 / 10, h10 / 10
    else:
        w, h = rng.randint(2, 12), rng.randint(2, 12)
        w_txt, h_txt = str(w), str(h)
        if rng.random() < 0.5:
            spec = _spec("What is the area of the rectangle?", str(w * h), unit="square cm", **common)
            value, step = w * h, max(1, min(w, h))
        else:
            spec = _spec("What is the perimeter of the rectangle?", str(2 * (w + h)), unit="cm", **common)
            value, step = 2 * (w + h), 2
        if variant == "mc_num":
            _as_multi_choice(spec, _numeric_choices(rng, value, step, 0, 1))
        w_rel, h_rel = w, h

    c = _Canvas(size)
    dw = 24 + 56 * (min(w_rel, 12) - 1) / 11
    dh = 20 + 50 * (min(h_rel, 12) - 1) / 11
    x0, y0 = 10, 18
    box = [(c.p(x0), c.p(y0)), (c.p(x0 + dw), c.p(y0 + dh))]
    c.draw.rectangle(box, fill=(225, 238, 250), outline=_BLACK, width=c.line)
    c.text((c.p(x0 + dw / 2), c.p(y0 + dh + 3)), f"{w_txt} cm", anchor="mt")
    c.text((c.p(x0 + dw + 3), c.p(y0 + dh / 2)), f"{h_txt} cm", anchor="lm")
    return spec, c.image


def _triangle(rng: random.Random, variant: str, size: int):
    while True:
        a, b = rng.randrange(30, 100, 5), rng.randrange(30, 100, 5)
        if 180 - a - b >= 25:
            break
    third = 180 - a - b
    spec = _spec(
        "In triangle ABC, the measures of angle A and angle B are shown. What is the measure of angle C?",
        str(third),
        unit="degrees",
        context="geometry diagram",
        task="geometry problem solving",
        skills=["geometry reasoning", "algebraic reasoning"],
        grade="high school",
    )
    if variant == "mc_num":
        _as_multi_choice(spec, _numeric_choices(rng, third, 5, 0, 5))

    # unit base A=(0,0), B=(1,0); apex C from the law of sines (y grows upward here)
    ra, rb, rc = (math.radians(x) for x in (a, b, third))
    ac = math.sin(rb) / math.sin(rc)
    pts = [(0.0, 0.0), (1.0, 0.0), (ac * math.cos(ra), ac * math.sin(ra))]
    xs, ys = [q[0] for q in pts], [q[1] for q in pts]
    box_l, box_r, box_t, box_b = 20, 108, 18, 106
    scale = min((box_r - box_l) / (max(xs) - min(xs)), (box_b - box_t) / (max(ys) - min(ys)))
    off_x = box_l + ((box_r - box_l) - scale * (max(xs) - min(xs))) / 2 - scale * min(xs)
    design = [(off_x + scale * x, box_b - scale * y) for x, y in pts]  # flip y for the image
    centroid = (sum(q[0] for q in design) / 3, sum(q[1] for q in design) / 3)

    c = _Canvas(size)
    c.draw.polygon([(c.p(x), c.p(y)) for x, y in design], fill=(250, 240, 215), outline=_BLACK)
    c.draw.line([(c.p(x), c.p(y)) for x, y in design + design[:1]], fill=_BLACK, width=c.line)
    for (x, y), name, label, angle in zip(design, "ABC", (f"{a}°", f"{b}°", "?"), (ra, rb, rc)):
        dx, dy = centroid[0] - x, centroid[1] - y
        d = math.hypot(dx, dy) or 1.0
        ux, uy = dx / d, dy / d
        # far enough along the bisector that the label clears both sides of a sharp angle
        inside = min(10.0 / math.sin(angle / 2), 0.6 * d)
        c.text((c.p(x + ux * inside), c.p(y + uy * inside)), label)
        c.text((c.p(x - ux * 9), c.p(y - uy * 9)), name)
    return spec, c.image


def _number_line(rng: random.Random, variant: str, size: int):
    mult = rng.choice([1, 1, 10])
    start = rng.randint(0, 5)
    use_half = variant == "free_num" and rng.random() < 0.6
    if use_half:
        pos2 = 2 * rng.randint(0, 3) + 1  # position in half steps from the start
    else:
        pos2 = 2 * rng.randint(0, 4)
    value_halves = (2 * start + pos2) * mult  # value = value_halves / 2
    common = dict(context="number line", task="figure question answering", skills=["algebraic reasoning"])
    question = "What number does the red dot mark on the number line?"
    if value_halves % 2:
        spec = _spec(question, f"{value_halves / 2:.1f}", precision=1.0, answer_type="float", **common)
    else:
        spec = _spec(question, str(value_halves // 2), **common)
        if variant == "mc_num":
            _as_multi_choice(spec, _numeric_choices(rng, value_halves // 2, mult, 0, 0))

    c = _Canvas(size)
    x0, x1, y = 14, 114, 70
    c.draw.line([(c.p(x0 - 6), c.p(y)), (c.p(x1 + 6), c.p(y))], fill=_BLACK, width=c.line)
    step = (x1 - x0) / 8  # half steps
    for k in range(9):
        x = x0 + k * step
        tick = 7 if k % 2 == 0 else 4
        c.draw.line([(c.p(x), c.p(y - tick)), (c.p(x), c.p(y + tick))], fill=_BLACK, width=c.line)
        if k % 2 == 0:
            c.text((c.p(x), c.p(y + 10)), str((start + k // 2) * mult), anchor="mt")
    dx, r = x0 + pos2 * step, 4.5
    c.draw.ellipse(
        [(c.p(dx - r), c.p(y - r)), (c.p(dx + r), c.p(y + r))], fill=_COLOURS["red"], outline=_BLACK
    )
    return spec, c.image


# ---------------------------------------------------------------- the demo's readable families
# A 1 M-parameter model sees a 128 px image as 4 x 4 merged tokens of 32 px. These families ask for something every
# one of those tokens carries (a colour, a grey level) as a small integer (1-4), so it learns to read them from a few
# hundred rows in a minute of CPU. Counting squares and bar heights (measured) stayed near chance in that budget.
_READABLE_COLOURS = ("red", "blue", "green", "orange")


def _readable_spec(question: str, answer: int, context: str) -> dict[str, Any]:
    return _spec(question, str(answer), context=context, task="figure question answering",
                 skills=["numeric commonsense"])


def _square_box(c: _Canvas, rng: random.Random) -> list[tuple[float, float]]:
    """A square of random side and position (jittered so that no two images repeat), as canvas corners."""
    side, top, left = rng.randint(56, 96), rng.randint(4, 28), rng.randint(4, 28)
    return [(c.p(left), c.p(top)), (c.p(left + side), c.p(top + side))]


def _colour_code(rng: random.Random, variant: str, size: int):
    answer = rng.randint(1, 4)
    spec = _readable_spec("The colour of the square stands for a number: red 1, blue 2, green 3, orange 4. "
                          "Which number is it?", answer, "colour code")
    c = _Canvas(size)
    c.draw.rectangle(_square_box(c, rng), fill=_COLOURS[_READABLE_COLOURS[answer - 1]], outline=_BLACK)
    return spec, c.image


_GREY_LEVELS = (210, 150, 90, 30)


def _grey_level(rng: random.Random, variant: str, size: int):
    answer = rng.randint(1, 4)
    spec = _readable_spec("How dark is the square? Answer 1 for light grey, 2 for grey, 3 for dark grey, 4 for "
                          "black.", answer, "grey level")
    c = _Canvas(size)
    box = _square_box(c, rng)
    level = _GREY_LEVELS[answer - 1] + rng.randint(-8, 8)
    c.draw.rectangle(box, fill=(level, level, level), outline=_BLACK)
    return spec, c.image


READABLE_FAMILIES: dict[str, Callable] = {
    "colour_code": _colour_code,
    "grey_level": _grey_level,
}
TASK_SETS = ("mathvista", "readable")
"""``mathvista``: MathVista-like problems (bar charts, counting, geometry, number lines), mostly beyond a tiny
model; ``readable``: two families a tiny model can learn to read in a minute (colour code, grey level), both
answered with 1-4."""


FAMILIES: dict[str, Callable] = {
    "bar_chart": _bar_chart,
    "counting": _counting,
    "rectangle": _rectangle,
    "triangle": _triangle,
    "number_line": _number_line,
}
TEXT_FAMILIES = ("bar_chart", "counting")  # families that have word answers
