"""SAEDashboard's page made offline and image-aware.

``save_feature_centric_vis`` writes a page that loads d3 (v6) and plotly from CDNs and shows
every token as text. ``make_offline`` rewrites the two script tags to local copies, taken from
installed packages (plotly's own ``plotly.min.js``; d3 v5 as mpld3 ships it: the page uses only
d3's selections, which v5 has; on v5 a token's hover box is placed without the mouse event), in
``ASSETS_DIR`` next to the page, and adds a script that shows each image token (a ``thumbs/``
path or a ``data:image/`` URL) as the image itself.
"""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

ASSETS_DIR = "saedashboard_assets"
CDN_SCRIPTS = {
    "d3.min.js": re.compile(r'<script src="https://d3js\.org/d3\.v\d+\.min\.js"></script>'),
    "plotly.min.js": re.compile(
        r'<script src="https://cdn\.plot\.ly/plotly[\w.-]*\.min\.js"></script>'
    ),
}
"""The CDN script tags of SAEDashboard's page, by the local file that replaces each."""

IMAGE_SCRIPT = """<script>
(function () {
  // Image tokens (thumbnail paths of this export, or data: URLs) become images.
  const IMAGE = /^(thumbs\\/\\d+\\/[0-9a-f]+\\.jpg|data:image\\/jpeg;base64,[A-Za-z0-9+\\/=]+)$/;
  function show() {
    document.querySelectorAll("span.token").forEach(function (span) {
      const ref = span.textContent;
      if (span.dataset.image || !IMAGE.test(ref)) return;
      span.dataset.image = "1";
      const image = document.createElement("img");
      image.src = ref;
      image.alt = ref;
      image.className = "sae-vlm-image";
      image.style.width = "112px";
      image.style.verticalAlign = "middle";
      span.textContent = "";
      span.appendChild(image);
    });
  }
  new MutationObserver(show).observe(document.body, {childList: true, subtree: true});
  show();
})();
</script>
"""


def _asset_sources() -> dict[str, Path]:
    return {
        "d3.min.js": Path(str(resources.files("mpld3") / "js" / "d3.v5.min.js")),
        "plotly.min.js": Path(str(resources.files("plotly") / "package_data" / "plotly.min.js")),
    }


def make_offline(page: str | Path) -> Path:
    """Rewrite SAEDashboard's ``page`` in place to run without a network and show images;
    returns the folder of the copied scripts. A page without the expected CDN tags raises."""
    page = Path(page)
    text = page.read_text()
    assets = page.parent / ASSETS_DIR
    assets.mkdir(exist_ok=True)
    for name, source in _asset_sources().items():
        text, n = CDN_SCRIPTS[name].subn(f'<script src="{ASSETS_DIR}/{name}"></script>', text)
        if n != 1:
            raise ValueError(f"{page}: expected one CDN script tag for {name}, found {n}")
        shutil.copyfile(source, assets / name)
    page.write_text(text + IMAGE_SCRIPT)
    return assets
