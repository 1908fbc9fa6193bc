"""CJK glyphs: an offline many-class open-set benchmark rendered from Debian's fonts.

A class is one CJK character (a hanzi / kanji); its samples are that character rendered in
every installed CJK font (brush, Ming/Mincho, Gothic/sans, handwriting, rounded), each a few
times with a light random affine distortion: real style variation between the samples of a
class, as in Omniglot, with hundreds of classes and nothing to download at run time. The
fonts ship in Debian packages (`GLYPH_FONTS` lists them with their packages)::

    apt-get install fonts-arphic-ukai fonts-arphic-uming fonts-arphic-gkai00mp \\
        fonts-arphic-bsmi00lp fonts-wqy-microhei fonts-ipafont-gothic fonts-ipafont-mincho \\
        fonts-ipaexfont-mincho fonts-vlgothic fonts-morisawa-bizud-mincho fonts-seto \\
        fonts-kouzan-mouhitsu fonts-motoya-l-cedar fonts-motoya-l-maruberi fonts-komatuna

(65 MB of packages; 17 fonts). Rendering needs Pillow and fontTools (``pip install
keras-featreg[glyphs]``; both come with matplotlib too).
"""

import hashlib
import json
import os

import numpy as np

from keras_featreg._utils import check_int

__all__ = ["GLYPH_FONTS", "GLYPH_FONT_PACKAGES", "available_glyph_fonts", "load_glyphs_split"]

# name -> (Debian package, font file, face index in a .ttc collection, style). The order is
# the order of the samples within a class.
GLYPH_FONTS = {
    "ukai": ("fonts-arphic-ukai", "/usr/share/fonts/truetype/arphic/ukai.ttc", 0, "brush (kai)"),
    "uming": ("fonts-arphic-uming", "/usr/share/fonts/truetype/arphic/uming.ttc", 0, "Ming"),
    "gkai00mp": ("fonts-arphic-gkai00mp",
                 "/usr/share/fonts/truetype/arphic-gkai00mp/gkai00mp.ttf", 0, "brush (kai)"),
    "bsmi00lp": ("fonts-arphic-bsmi00lp",
                 "/usr/share/fonts/truetype/arphic-bsmi00lp/bsmi00lp.ttf", 0, "Ming"),
    "wqy-microhei": ("fonts-wqy-microhei", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0,
                     "sans"),
    "ipagothic": ("fonts-ipafont-gothic", "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf", 0,
                  "gothic (sans)"),
    "ipamincho": ("fonts-ipafont-mincho", "/usr/share/fonts/opentype/ipafont-mincho/ipam.ttf", 0,
                  "mincho"),
    "ipaexmincho": ("fonts-ipaexfont-mincho",
                    "/usr/share/fonts/opentype/ipaexfont-mincho/ipaexm.ttf", 0, "mincho"),
    "vlgothic": ("fonts-vlgothic", "/usr/share/fonts/truetype/vlgothic/VL-Gothic-Regular.ttf", 0,
                 "gothic (sans)"),
    "bizudmincho": ("fonts-morisawa-bizud-mincho",
                    "/usr/share/fonts/truetype/bizud-mincho/BIZUDMincho-Regular.ttf", 0, "mincho"),
    "seto": ("fonts-seto", "/usr/share/fonts/truetype/seto/setofont.ttf", 0, "handwriting"),
    "kouzan": ("fonts-kouzan-mouhitsu",
               "/usr/share/fonts/truetype/kouzan-mouhitsu/kouzan-mouhitsu.ttf", 0,
               "brush (kaisho)"),
    "kouzan-gyosho": ("fonts-kouzan-mouhitsu",
                      "/usr/share/fonts/truetype/kouzan-mouhitsu/kouzan-mouhitsu-gyosho.ttf", 0,
                      "brush (semi-cursive)"),
    "kouzan-sousyo": ("fonts-kouzan-mouhitsu",
                      "/usr/share/fonts/truetype/kouzan-mouhitsu/KouzanBrushFontSousyo.ttf", 0,
                      "brush (cursive)"),
    "motoya-cedar": ("fonts-motoya-l-cedar", "/usr/share/fonts/truetype/motoya-l-cedar/MTLc3m.ttf",
                     0, "pen"),
    "motoya-maruberi": ("fonts-motoya-l-maruberi",
                        "/usr/share/fonts/truetype/motoya-l-maruberi/MTLmr3m.ttf", 0, "rounded"),
    "komatuna": ("fonts-komatuna", "/usr/share/fonts/truetype/komatuna/komatuna.ttf", 0,
                 "rounded"),
}
GLYPH_FONT_PACKAGES = tuple(dict.fromkeys(spec[0] for spec in GLYPH_FONTS.values()))

_FORMAT = 1  # bump when the rendering changes: it is part of the cache key
_CJK_RANGE = (0x4E00, 0x9FFF)  # CJK Unified Ideographs
_SUPERSAMPLE = 4  # render at 4x, distort, then average 4x4 blocks
_MAX_ROTATION = 10.0  # degrees
_SCALE_RANGE = (0.85, 1.05)
_MAX_SHIFT = 0.06  # fraction of the image side
_GLYPH_FILL = 0.8  # em size / image side


def _install_hint():
    return "apt-get install " + " ".join(GLYPH_FONT_PACKAGES)


def available_glyph_fonts():
    """The fonts of `GLYPH_FONTS` whose files are installed, in `GLYPH_FONTS` order.

    Returns:
        a list of font names (keys of `GLYPH_FONTS`).

    Example:
    >>> set(available_glyph_fonts()) <= set(GLYPH_FONTS)
    True
    """
    return [name for name, spec in GLYPH_FONTS.items() if os.path.isfile(spec[1])]


def _resolve_fonts(fonts, min_fonts):
    if fonts is None:
        names = available_glyph_fonts()
        if len(names) < min_fonts:
            missing = [n for n in GLYPH_FONTS if n not in names]
            raise FileNotFoundError(
                f"load_glyphs_split needs at least {min_fonts} CJK fonts (`min_fonts`); found "
                f"{len(names)} ({', '.join(names) or 'none'}). Missing: {', '.join(missing)}. "
                f"Install Debian's CJK font packages: {_install_hint()}"
            )
        return [(name, GLYPH_FONTS[name][1], GLYPH_FONTS[name][2]) for name in names]
    if isinstance(fonts, (str, bytes)) or not len(fonts):
        raise ValueError(
            "`fonts` must be None or a non-empty list of names from GLYPH_FONTS, font file "
            f"paths or (path, face index) pairs. Received: fonts={fonts!r}"
        )
    resolved = []
    for font in fonts:
        if isinstance(font, str) and font in GLYPH_FONTS:
            name, path, index = font, GLYPH_FONTS[font][1], GLYPH_FONTS[font][2]
        elif isinstance(font, str):
            name, path, index = os.path.basename(font), font, 0
        elif isinstance(font, (tuple, list)) and len(font) == 2:
            path, index = str(font[0]), int(font[1])
            name = f"{os.path.basename(path)}#{index}"
        else:
            raise ValueError(
                "`fonts` entries must be names from GLYPH_FONTS, font file paths or "
                f"(path, face index) pairs. Received: {font!r}"
            )
        if not os.path.isfile(path):
            package = GLYPH_FONTS[font][0] if font in GLYPH_FONTS else None
            hint = f" (apt-get install {package})" if package else ""
            raise FileNotFoundError(f"font file {path} not found{hint}. Received: {font!r}")
        resolved.append((name, path, index))
    if len({(p, i) for _, p, i in resolved}) != len(resolved):
        raise ValueError(f"`fonts` lists a font twice. Received: fonts={fonts!r}")
    return resolved


def _import_pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont
        from fontTools.ttLib import TTFont
    except ImportError as error:  # pragma: no cover - both come with matplotlib
        raise ImportError(
            "load_glyphs_split renders with Pillow and reads the fonts' character maps with "
            "fontTools: pip install 'keras-featreg[glyphs]' (or pip install Pillow fonttools)"
        ) from error
    return Image, ImageDraw, ImageFont, TTFont


def _default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "keras_featreg", "glyphs")


class _Renderer:
    """Renders one character in one font at `image_size`, optionally distorted (uint8)."""

    def __init__(self, fonts, image_size):
        Image, ImageDraw, ImageFont, _ = _import_pillow()
        self._image, self._draw = Image, ImageDraw
        self.size = image_size
        self.canvas = image_size * _SUPERSAMPLE
        em = int(round(self.canvas * _GLYPH_FILL))
        self.faces = [ImageFont.truetype(path, size=em, index=index) for _, path, index in fonts]

    def render(self, char, font_index, rng=None):
        """uint8 (size, size) image, ink 255 on 0, or None when the glyph is empty."""
        face = self.faces[font_index]
        left, top, right, bottom = face.getbbox(char)
        if right <= left or bottom <= top:
            return None
        canvas = self._image.new("L", (self.canvas, self.canvas), 0)
        c = self.canvas / 2.0
        # glyph bounding box centred on the canvas
        self._draw.Draw(canvas).text(
            (c - (left + right) / 2.0, c - (top + bottom) / 2.0), char, fill=255, font=face
        )
        if canvas.getbbox() is None:
            return None
        if rng is not None:
            angle = np.deg2rad(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
            scale = rng.uniform(*_SCALE_RANGE)
            dx, dy = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, size=2) * self.canvas
            # inverse map (output -> input) of: scale and rotate about the centre, then shift
            cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
            x0, y0 = c + dx, c + dy
            coeffs = (cos, sin, c - cos * x0 - sin * y0, -sin, cos, c + sin * x0 - cos * y0)
            canvas = canvas.transform(
                canvas.size, self._image.Transform.AFFINE, tuple(float(v) for v in coeffs),
                resample=self._image.Resampling.BILINEAR,
            )
        return np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.uint8)


def _common_char(char):
    """Whether `char` is a frequent character in Chinese (simplified and traditional) and
    Japanese alike: GB 2312 level 1, Big5's frequently used block, JIS X 0208 level 1."""
    try:
        gb, big5, jis = char.encode("gb2312"), char.encode("big5"), char.encode("euc_jp")
    except UnicodeEncodeError:
        return False
    return (
        len(gb) == 2 and 0xB0 <= gb[0] <= 0xD7  # GB 2312 rows 16-55: 3 755 common hanzi
        and len(big5) == 2 and 0xA440 <= int.from_bytes(big5, "big") <= 0xC67E  # 5 401
        and len(jis) == 2 and 0xB0 <= jis[0] <= 0xCF  # JIS X 0208 rows 16-47: 2 965 kanji
    )


def _covered(fonts):
    """Common characters (`_common_char`) that every font maps, in code point order."""
    *_, TTFont = _import_pillow()
    common = {c for c in range(_CJK_RANGE[0], _CJK_RANGE[1] + 1) if _common_char(chr(c))}
    for _, path, index in fonts:
        font = TTFont(path, fontNumber=index, lazy=True)
        common &= set(font.getBestCmap())
        font.close()
    return sorted(common)


def _choose_chars(fonts, renderer, num_classes, seed):
    """`num_classes` characters every font maps and renders non-empty, in a seeded order."""
    candidates = _covered(fonts)
    order = np.random.default_rng([seed, 0x6C79]).permutation(len(candidates))
    chars = []
    for i in order:
        char = chr(candidates[i])
        if all(renderer.render(char, f) is not None for f in range(len(fonts))):
            chars.append(char)
            if len(chars) == num_classes:
                return chars
    raise ValueError(
        f"`num_classes` is larger than the {len(chars)} common characters that all "
        f"{len(fonts)} fonts cover. Received: num_classes={num_classes}"
    )


def _cache_key(fonts, num_classes, image_size, samples_per_font, augment, seed):
    from PIL import Image, features

    payload = {
        "format": _FORMAT,
        "fonts": [[name, os.path.realpath(path), index, os.path.getsize(path)]
                  for name, path, index in fonts],
        "num_classes": num_classes,
        "image_size": image_size,
        "samples_per_font": samples_per_font,
        "augment": augment,
        "seed": seed,
        "pillow": Image.__version__,
        "freetype": features.version("freetype2"),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _render_all(fonts, renderer, chars, samples_per_font, augment, seed):
    n = len(chars) * len(fonts) * samples_per_font
    x = np.zeros((n, renderer.size, renderer.size), np.uint8)
    y = np.repeat(np.arange(len(chars), dtype=np.int64), len(fonts) * samples_per_font)
    i = 0
    for label, char in enumerate(chars):
        for f in range(len(fonts)):
            for k in range(samples_per_font):
                # one generator per image: an image does not depend on the other classes
                rng = np.random.default_rng([seed, ord(char), f, k]) if augment else None
                x[i] = renderer.render(char, f, rng)
                i += 1
    return x, y


def load_glyphs_split(num_classes=400, train_classes=200, image_size=32, samples_per_font=2,
                      fonts=None, min_fonts=8, augment=True, seed=0, cache_dir=None,
                      flatten=False, return_info=False):
    """CJK characters rendered in Debian's CJK fonts, split into disjoint train/test classes.

    An offline many-class open-set benchmark in the spirit of Omniglot: a class is a CJK
    character, its samples are the character in every font.

    Construction:

    * **Fonts** (`fonts=None`): every installed font of `GLYPH_FONTS`, 17 faces from 15
      Debian packages (`GLYPH_FONT_PACKAGES`): AR PL UKai / KaitiM GB (brush), AR PL UMing /
      Mingti2L Big5 (Ming), WenQuanYi Micro Hei, IPAGothic, VL Gothic (sans), IPAMincho,
      IPAexMincho, BIZ UDMincho (mincho), Kouzan brush in three scripts (regular,
      semi-cursive, cursive), Seto (handwriting), Motoya L Cedar (pen), Motoya L Maruberi and
      Komatuna (rounded). At least `min_fonts` must be installed.
    * **Characters**: the frequent characters common to Chinese and Japanese, defined with
      Python's own codecs: in GB 2312 level 1 (3 755 common simplified hanzi), Big5's
      frequently used block (5 401 traditional) and JIS X 0208 level 1 (2 965 kanji) at
      once: 1 583 characters (一丁七丈三上下不…), those every font maps (all 1 583 with the
      17 fonts), in a permutation fixed by `seed`; a character is kept when every font
      draws it non-empty. The first `num_classes` kept characters are the classes
      ``0 … num_classes − 1``.
    * **Images**: each character in each font, `samples_per_font` times: drawn at 4×
      `image_size` with the em at 80 % of the side and the glyph's bounding box centred,
      distorted (if `augment`) by a random rotation (±10°), scale (0.85–1.05) and shift
      (±6 % of the side) about the centre, bilinear, then reduced by 4×4 block averaging.
      Each image's distortion comes from its own generator seeded with (`seed`, code point,
      font, sample), so an image does not depend on the other classes.
    * **Split**: classes ``0 … train_classes − 1`` train, the others test (disjoint).
      Samples are ordered by class, then font, then sample.
    * **Cache**: the uint8 images go to ``<cache_dir>/<key>.npz`` (default
      ``$XDG_CACHE_HOME`` or ``~/.cache``, then ``keras_featreg/glyphs``); the key hashes
      the font files (path, face, size), the parameters and the Pillow and FreeType
      versions. Same inputs → byte-identical arrays; a later call reads the file.

    With the 17 fonts at 32 px: 200 classes × 17 fonts × 2 samples (6 800 images) take about
    4 s to build on one CPU core and 2.3 MB of cache; the default 400 classes (13 600
    images) about 8 s and 4.6 MB; a cached call reads the file in well under a second.

    Args:
        num_classes: number of classes (characters), train + test.
        train_classes: number of training classes (the first ones); the other
            ``num_classes - train_classes`` are the test classes.
        image_size: side of the square images, in pixels (>= 8).
        samples_per_font: images per character and font.
        fonts: None (every installed font of `GLYPH_FONTS`) or a list of names from
            `GLYPH_FONTS`, font file paths or ``(path, face index)`` pairs.
        min_fonts: with `fonts=None`, the fewest installed fonts accepted.
        augment: apply the random affine distortion (False: every sample of a font is the
            same centred glyph).
        seed: chooses the characters and the distortions.
        cache_dir: folder of the cache; None for the default, False for no cache.
        flatten: return (n, image_size²) vectors instead of (n, image_size, image_size, 1).
        return_info: also return a dict with ``chars`` (the characters, index = class id),
            ``fonts`` (the font names) and ``cache_path``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 images in [0, 1] (ink = 1), int64
        labels; with `return_info`, ``((x_train, y_train), (x_test, y_test), info)``.

    Raises:
        ValueError: a bad argument (named in the message).
        FileNotFoundError: fewer than `min_fonts` fonts installed, or a font file of
            `fonts` missing; the message gives the `apt-get install` command.

    Example:
    >>> (x_tr, y_tr), (x_te, y_te) = load_glyphs_split(  # doctest: +SKIP
    ...     num_classes=400, train_classes=200)
    >>> x_tr.shape, len(set(y_tr)), len(set(y_te))  # doctest: +SKIP
    ((6800, 32, 32, 1), 200, 200)
    """
    check_int("num_classes", num_classes, 2)
    check_int("train_classes", train_classes)
    if train_classes >= num_classes:
        raise ValueError(
            "`train_classes` must be smaller than `num_classes` (the rest are the test "
            f"classes). Received: train_classes={train_classes}, num_classes={num_classes}"
        )
    check_int("image_size", image_size, 8)
    check_int("samples_per_font", samples_per_font)
    check_int("min_fonts", min_fonts)
    check_int("seed", seed, 0)
    fonts = _resolve_fonts(fonts, min_fonts)
    num_classes, image_size, samples_per_font, augment, seed = (
        int(num_classes), int(image_size), int(samples_per_font), bool(augment), int(seed))

    cache_path = x = None
    if cache_dir is not False:
        key = _cache_key(fonts, num_classes, image_size, samples_per_font, augment, seed)
        cache_dir = _default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
        cache_path = os.path.join(cache_dir, f"{key}.npz")
        if os.path.isfile(cache_path):
            with np.load(cache_path) as cached:
                x, y, chars = cached["x"], cached["y"], cached["chars"].tolist()
    if x is None:
        renderer = _Renderer(fonts, image_size)
        chars = _choose_chars(fonts, renderer, num_classes, seed)
        x, y = _render_all(fonts, renderer, chars, samples_per_font, augment, seed)
        if cache_path is not None:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{cache_path}.{os.getpid()}.tmp.npz"
            np.savez_compressed(tmp, x=x, y=y, chars=np.array(chars))
            os.replace(tmp, cache_path)

    x = x.astype(np.float32) / np.float32(255)
    x = x.reshape(len(x), -1) if flatten else x[..., None]
    train = y < train_classes
    result = (x[train], y[train]), (x[~train], y[~train])
    if return_info:
        info = {"chars": list(chars), "fonts": [name for name, _, _ in fonts],
                "cache_path": cache_path}
        return result + (info,)
    return result
