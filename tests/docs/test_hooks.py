"""The site's MkDocs hooks (docs/hooks.py): aml's version on every page, inline code that
breaks only between words."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))
import hooks  # noqa: E402  (docs/ is not a package)

import aml  # noqa: E402


def test_the_site_name_carries_amls_version():
    assert hooks.on_config({"site_name": "aml"})["site_name"] == f"aml {aml.__version__}"


def test_inline_code_keeps_flags_with_their_values_and_code_blocks_are_left_alone():
    html = ('<p>Run <code>main.py --training-dataset synth-sfm -j 0 --quiet</code>.</p>'
            '<pre><span></span><code>python main.py --epochs 2\n</code></pre>')
    out = hooks.on_page_content(html)
    assert ('<code><span class="nowrap">main.py</span> <span class="nowrap">--training-dataset synth-sfm</span> '
            '<span class="nowrap">-j 0</span> <span class="nowrap">--quiet</span></code>') in out
    assert out.endswith('<pre><span></span><code>python main.py --epochs 2\n</code></pre>')
    long_name = "x" * (hooks.NOWRAP_MAX + 1)
    assert hooks.keep_words_whole(long_name) == long_name
