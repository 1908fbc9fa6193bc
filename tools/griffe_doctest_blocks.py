"""Griffe extension for the documentation site (``mkdocs.yml``): render doctest examples.

The library's docstrings are Google style, with Sphinx roles (``:class:`...```) and doctest
examples after an ``Example:`` line, some indented under it, some not.  So that every example
renders the same way (a ``pycon`` code block) and none is read as Markdown (``>>>`` would be a
block quote and ``[...]`` outputs reference links), this extension rewrites each docstring's
text before it is parsed:

* each doctest block (from a ``>>>`` line to the next blank line) becomes a fenced ``pycon``
  block at the docstring's base indentation;
* an ``Example:`` / ``Examples:`` header that leads to such a block becomes a bold paragraph
  (instead of a Google "Examples" section, which would not match the unindented blocks);
* ``Text::`` literal-block markers become ``Text:``;
* Sphinx roles ``:class:`~a.b.C``` become inline code (``C``).

It only changes what the site shows; the source files and the doctests are untouched.
"""

import re

import griffe

_HEADER = re.compile(r"^(Examples?)( \(.*\))?(::?)\s*$")
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _role(match):
    target = match.group(2)
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def rewrite(text):
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _HEADER.match(line)
        if header:
            out.append(f"**{header.group(1)}{header.group(2) or ''}:**")
            i += 1
            continue
        if line.endswith("::") and not line.strip().startswith(">>>"):
            line = line[:-1]
        stripped = line.lstrip()
        if stripped.startswith(">>>"):
            indent = len(line) - len(stripped)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i].lstrip())
                i += 1
            if out and out[-1].strip():
                out.append("")
            out.extend(["```pycon", *block, "```", ""])
            continue
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = rewrite(obj.docstring.value)
