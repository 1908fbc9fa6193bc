"""The README's example runs as written, and the README stays on one screen (<= 12 KB)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_readme_size():
    assert len(README.read_bytes()) <= 12 * 1024


def test_readme_has_one_complete_example():
    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "the README holds exactly one python example"
    # No commented-out steps (e.g. "# model.fit(ds)"): every step must actually run.
    for line in blocks[0].splitlines():
        assert not re.match(r"\s*#\s*[\w.]+\s*[(=]", line), f"commented-out code: {line!r}"


def test_readme_example_runs(capsys):
    code = _python_blocks(README.read_text(encoding="utf-8"))[0]
    namespace = {"__name__": "__main__"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the point of the test
    out = capsys.readouterr().out
    assert "val_s_mu" in out and "loss" in out
    recall = namespace["recall_at_k"](namespace["model"].predict(namespace["x"], verbose=0),
                                      namespace["y"], ks=(1, 4))
    assert set(recall) == {1, 4} and all(0.0 <= v <= 1.0 for v in recall.values())
