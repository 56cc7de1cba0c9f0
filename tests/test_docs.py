"""The README is a front page and the guides in docs/ hold the rest: every link, script, flagfile and
`make` target they name exists, and nothing is said twice.

Reads Markdown only (no TensorFlow): runs in well under a second.
"""

import collections
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
README_MAX_LINES = 250
# One guide per concern (issue 23); the README links every one of them.
GUIDES = (
    "training.md",
    "method.md",
    "results.md",
    "own_data.md",
    "segmentation.md",
    "deploy.md",
    "optimize.md",
    "scaling.md",
    "contributing.md",
)

FENCE = re.compile(r"^ *```.*?^ *```[^\n]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SCRIPT = re.compile(r"(?<![\w/.-])scripts/([\w-]+\.py)")
FLAGFILE = re.compile(r"(?<![\w/.-])flags/([\w.-]+\.cfg)")
MAKE_IN_CODE = re.compile(r"^\s*make ([A-Za-z][\w-]*)", re.MULTILINE)
MAKE_INLINE = re.compile(r"`make ([A-Za-z][\w-]*)[^`]*`")


def _pages():
    return [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path):
    return os.path.relpath(path, ROOT)


def _prose(text):
    """The text without fenced code blocks (links and headings there are not Markdown)."""
    return FENCE.sub("", text)


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path):
    anchors, seen = set(), collections.Counter()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _prose(_read(path)), re.MULTILINE):
        slug = _slug(heading)
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def _make_targets():
    targets = set()
    for line in _read(os.path.join(ROOT, "Makefile")).splitlines():
        match = re.match(r"^([A-Za-z][\w.-]*(?: +[A-Za-z][\w.-]*)*) *:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets


def test_readme_is_a_front_page():
    lines = _read(README).count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move text to docs/"


def test_readme_opens_with_the_two_commands():
    first_block = _read(README).split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make train", "make test"], f"README's first bash block runs {commands}"


@pytest.mark.parametrize("guide", GUIDES)
def test_every_guide_exists_and_the_readme_links_it(guide):
    assert os.path.isfile(os.path.join(ROOT, "docs", guide)), f"docs/{guide} is missing"
    linked = {os.path.normpath(target.split("#")[0]) for target in LINK.findall(_prose(_read(README)))}
    assert os.path.join("docs", guide) in linked, f"README.md does not link docs/{guide}"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))), ids=os.path.basename)
def test_every_guide_starts_from_a_runnable_command(path):
    body = _read(path).split("\n", 1)[1].lstrip("\n") if _read(path).startswith("# ") else _read(path)
    assert body.startswith("```bash"), f"{_rel(path)}: after the title, the first thing should be a ```bash block"


def test_every_relative_link_resolves():
    broken = []
    for page in _pages():
        for target in LINK.findall(_prose(_read(page))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(resolved):
                broken.append(f"{_rel(page)}: {target} (no {_rel(resolved)})")
            elif anchor and resolved.endswith(".md") and os.path.isfile(resolved) and anchor not in _anchors(resolved):
                broken.append(f"{_rel(page)}: {target} (no heading #{anchor} in {_rel(resolved)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_script_and_flagfile_named_exists():
    missing = []
    for page in _pages():
        text = _read(page)
        missing += [f"{_rel(page)}: scripts/{name}" for name in sorted(set(SCRIPT.findall(text)))
                    if not os.path.isfile(os.path.join(ROOT, "scripts", name))]
        missing += [f"{_rel(page)}: flags/{name}" for name in sorted(set(FLAGFILE.findall(text)))
                    if not os.path.isfile(os.path.join(ROOT, "flags", name))]
    assert not missing, "named but missing:\n" + "\n".join(missing)


def test_every_make_target_named_is_in_the_makefile():
    targets = _make_targets()
    assert {"train", "test", "test-slow"} <= targets, targets
    unknown = []
    for page in _pages():
        text = _read(page)
        code = "\n".join(block for block in FENCE.findall(text))
        named = set(MAKE_IN_CODE.findall(code)) | set(MAKE_INLINE.findall(text))
        unknown += [f"{_rel(page)}: make {target}" for target in sorted(named - targets)]
    assert not unknown, "not a Makefile target:\n" + "\n".join(unknown)


def test_nothing_is_said_twice():
    """No sentence of 80 characters or more (outside code and tables) appears in two places."""
    where = collections.defaultdict(list)
    for page in _pages():
        prose = INLINE_CODE.sub("`code`", _prose(_read(page)))
        paragraphs = re.split(r"\n\s*\n", prose)
        for paragraph in paragraphs:
            if paragraph.lstrip().startswith(("|", "<!--", "![")):
                continue
            flat = " ".join(paragraph.split())
            for sentence in re.split(r"(?<=[.!?:])\s+", flat):
                if len(sentence) >= 80:
                    where[sentence].append(_rel(page))
    repeated = {sentence: pages for sentence, pages in where.items() if len(pages) > 1}
    assert not repeated, "said twice:\n" + "\n".join(f"{pages}: {s[:100]}" for s, pages in repeated.items())
