"""MkDocs hooks of the site (mkdocs.yml ``hooks:``).

- Every page shows the version of aml it documents: the header's site name carries
  ``aml.__version__``, read from the package, never typed.
- An inline code span without spaces and of at most ``NOWRAP_MAX`` characters (a flag, a file
  name, a short identifier) is kept on one line: browsers may break a line after a hyphen,
  which would split ``--training-dataset`` into ``--training-`` and ``dataset``.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOWRAP_MAX = 32
SHORT_CODE = re.compile(r"(?<!<pre>)<code>([^<\s]{1,%d})</code>" % NOWRAP_MAX)


def aml_version() -> str:
    """The version of the aml package in this checkout."""
    sys.path.insert(0, str(ROOT))
    import aml

    return aml.__version__


def on_config(config, **kwargs):
    config["site_name"] = f"aml {aml_version()}: asymmetric metric learning"
    return config


def on_page_content(html: str, **kwargs) -> str:
    return SHORT_CODE.sub(r'<code class="nowrap">\1</code>', html)
