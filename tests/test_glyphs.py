"""Tests for keras_featreg.data.load_glyphs_split (CJK glyphs rendered from Debian's fonts).

They render a small slice (12 classes, 3 fonts, 16 px) and are skipped, with the command to
run them, where Debian's CJK font packages are not installed (`.ci/run` installs them).
"""

import os

import numpy as np
import pytest

from keras_featreg.data import (
    GLYPH_FONT_PACKAGES,
    GLYPH_FONTS,
    available_glyph_fonts,
    load_glyphs_split,
)
from keras_featreg.data import glyphs as glyphs_module

_FONTS = available_glyph_fonts()[:3]
needs_fonts = pytest.mark.skipif(
    len(_FONTS) < 3,
    reason="needs 3 of the CJK fonts of keras_featreg.data.GLYPH_FONTS: install Debian's CJK "
    "fonts (apt-get install " + " ".join(GLYPH_FONT_PACKAGES) + ") to run it",
)
_SMALL = dict(num_classes=12, train_classes=7, image_size=16, samples_per_font=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("glyphs")
    return cache, load_glyphs_split(fonts=_FONTS, cache_dir=cache, return_info=True, **_SMALL)


@needs_fonts
def test_class_count_and_disjoint_splits(small):
    _, ((x_tr, y_tr), (x_te, y_te), info) = small
    per_class = len(_FONTS) * 2
    assert x_tr.shape == (7 * per_class, 16, 16, 1) and x_te.shape == (5 * per_class, 16, 16, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert sorted(set(y_tr.tolist())) == list(range(7))
    assert sorted(set(y_te.tolist())) == list(range(7, 12))
    assert np.bincount(np.concatenate([y_tr, y_te])).tolist() == [per_class] * 12
    assert len(set(info["chars"])) == 12 and info["fonts"] == _FONTS
    assert all(0x4E00 <= ord(c) <= 0x9FFF for c in info["chars"])
    # every image holds ink, in [0, 1]; a class's fonts differ
    x = np.concatenate([x_tr, x_te])
    assert x.min() == 0.0 and x.max() <= 1.0 and (x.reshape(len(x), -1).max(1) > 0.5).all()
    assert not np.array_equal(x_tr[0], x_tr[2])  # font 0 vs font 1 of class 0


@needs_fonts
def test_deterministic_and_slice_independent(small, tmp_path):
    _, ((x_tr, y_tr), (x_te, _), info) = small
    (x2, y2), (x2_te, _), info2 = load_glyphs_split(
        fonts=_FONTS, cache_dir=False, return_info=True, **_SMALL
    )
    assert info2["cache_path"] is None
    assert np.array_equal(x_tr, x2) and np.array_equal(y_tr, y2) and np.array_equal(x_te, x2_te)
    assert info2["chars"] == info["chars"]
    # a larger build starts with the same classes and the same images
    (x3, y3), _, info3 = load_glyphs_split(
        fonts=_FONTS, cache_dir=False, return_info=True, **dict(_SMALL, num_classes=14)
    )
    assert info3["chars"][:12] == info["chars"] and np.array_equal(x3, x_tr)
    # another seed: other characters / distortions
    (x4, _), _ = load_glyphs_split(fonts=_FONTS, cache_dir=False, **dict(_SMALL, seed=1))
    assert not np.array_equal(x4, x_tr)
    # no augmentation: every sample of a font is the same image
    (x5, _), _ = load_glyphs_split(fonts=_FONTS, cache_dir=False, augment=False, **_SMALL)
    assert np.array_equal(x5[0], x5[1]) and not np.array_equal(x_tr[0], x_tr[1])


@needs_fonts
def test_cache_is_written_once_and_read(small, monkeypatch):
    cache, ((x_tr, _), (x_te, _), info) = small
    path = info["cache_path"]
    assert os.path.dirname(path) == str(cache) and path.endswith(".npz")
    assert os.listdir(cache) == [os.path.basename(path)]  # no temporary file left
    mtime = os.stat(path).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("rendered although cached")

    monkeypatch.setattr(glyphs_module, "_render_all", fail)
    monkeypatch.setattr(glyphs_module, "_choose_chars", fail)
    (x2, _), (x2_te, _), info2 = load_glyphs_split(
        fonts=_FONTS, cache_dir=cache, return_info=True, **_SMALL
    )
    assert np.array_equal(x2, x_tr) and np.array_equal(x2_te, x_te)
    assert info2["chars"] == info["chars"] and os.stat(path).st_mtime_ns == mtime
    # other parameters: another file; the flattened view reads the same file
    (xf, _), _ = load_glyphs_split(fonts=_FONTS, cache_dir=cache, flatten=True, **_SMALL)
    assert xf.shape == (len(x_tr), 256) and np.array_equal(xf, x_tr.reshape(len(x_tr), -1))
    with pytest.raises(AssertionError, match="rendered although cached"):
        load_glyphs_split(fonts=_FONTS, cache_dir=cache, **dict(_SMALL, seed=3))


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert glyphs_module._default_cache_dir() == os.path.join(
        str(tmp_path), "keras_featreg", "glyphs"
    )


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=10.5), "num_classes"),
        (dict(train_classes=0), "train_classes"),
        (dict(num_classes=10, train_classes=10), "train_classes"),
        (dict(image_size=4), "image_size"),
        (dict(samples_per_font=0), "samples_per_font"),
        (dict(seed=-1), "seed"),
        (dict(fonts="ukai"), "fonts"),
        (dict(fonts=[]), "fonts"),
        (dict(fonts=[3]), "fonts"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        load_glyphs_split(cache_dir=False, **kwargs)


def test_missing_fonts_name_the_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(glyphs_module, "available_glyph_fonts", lambda: [])
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-arphic-ukai .*min_fonts|"
                       "min_fonts.*apt-get install fonts-arphic-ukai"):
        load_glyphs_split(cache_dir=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_glyphs_split(fonts=[str(tmp_path / "nofont.ttf")], cache_dir=False)
    assert set(GLYPH_FONT_PACKAGES) == {spec[0] for spec in GLYPH_FONTS.values()}


@needs_fonts
def test_too_many_classes():
    with pytest.raises(ValueError, match="`num_classes` is larger"):
        load_glyphs_split(num_classes=5000, train_classes=10, fonts=_FONTS, cache_dir=False)


def test_ci_installs_every_font_package():
    ci = os.path.join(os.path.dirname(__file__), os.pardir, ".ci", "run")
    if not os.path.isfile(ci):
        pytest.skip("no .ci/run next to the tests (an sdist)")
    text = open(ci, encoding="utf-8").read()
    listed = text.split('GLYPH_FONT_PACKAGES="', 1)[1].split('"', 1)[0].split()
    assert listed == list(GLYPH_FONT_PACKAGES)
