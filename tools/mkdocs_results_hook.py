"""MkDocs hook: serve the figures of ``results/`` with the documentation site.

The PNG files written by the example scripts live in ``results/`` (outside ``docs/``).  Instead
of keeping a second copy of each binary file under ``docs/``, this hook adds every
``results/**/*.png`` to the site's files at build time, under the same relative path
(``results/...``).  Pages link to them as ``../results/<name>.png``; since they are documentation
files for MkDocs, ``mkdocs build --strict`` validates those links like any other.
"""

from pathlib import Path

from mkdocs.structure.files import File


def on_files(files, config):
    root = Path(config["config_file_path"]).resolve().parent
    results = root / "results"
    for png in sorted(results.rglob("*.png")):
        rel = png.relative_to(root)
        if "tmp" in rel.parts[:2]:  # results/tmp/ holds scratch runs (git-ignored)
            continue
        uri = rel.as_posix()
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
