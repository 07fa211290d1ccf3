"""MkDocs hooks of the site (mkdocs.yml ``hooks:``).

- Every page shows the version of aml it documents: the header's site name carries
  ``aml.__version__``, read from the package, never typed.
- Inline code breaks only at its spaces: each word of at most ``NOWRAP_MAX`` characters (a file
  name, a flag with its value) is kept on one line. Browsers otherwise break a line after a
  hyphen, or anywhere in code, which splits ``--training-dataset`` into ``--training-`` and
  ``dataset``. Longer words may still break, so that no line runs off a phone's screen.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOWRAP_MAX = 48
# inline code only: a code block's <code> follows <pre> or Pygments' empty <span></span>
INLINE_CODE = re.compile(r"(?<!<pre>)(?<!</span>)<code>([^<]*)</code>")


def aml_version() -> str:
    """The version of the aml package in this checkout."""
    sys.path.insert(0, str(ROOT))
    import aml

    return aml.__version__


FLAG_AND_VALUE = re.compile(r"(?<!\S)--?[A-Za-z][\w-]* (?!-)[^\s<]+|\S+")


def keep_words_whole(code: str) -> str:
    """The text of an inline code span with each short word, or flag and its value, in a span
    that does not break."""
    return FLAG_AND_VALUE.sub(lambda word: f'<span class="nowrap">{word.group()}</span>'
                              if len(word.group()) <= NOWRAP_MAX else word.group(), code)


def on_config(config, **kwargs):
    config["site_name"] = f"aml {aml_version()}"
    return config


def on_page_content(html: str, **kwargs) -> str:
    return INLINE_CODE.sub(lambda match: f"<code>{keep_words_whole(match.group(1))}</code>", html)
