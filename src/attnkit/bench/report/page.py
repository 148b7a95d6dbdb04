"""The HTML page every report and view is written into: one style, and a script that records what rendered."""
from __future__ import annotations

import html

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; }
#recommendation { border: 2px solid #4a7; border-radius: 6px; padding: 0 1em 0.5em; background: #f4fbf6; }
ul.ranked li { margin: 0.3em 0; } .holds { font-weight: bold; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 12px; display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
th { background: #eee; } td.ok { background: #d8f5d0; } td.refused { background: #eee; color: #777; }
td.bad { background: #f8d0d0; } img { width: 100%; display: block; margin: 0.5em 0; }
.meta { color: #555; font-size: 12px; }
p.tokens { font-size: 16px; line-height: 2; } .tok { padding: 1px 3px; border-radius: 3px; }
"""

# Marks the page once it has loaded, so a headless browser's DOM dump shows what it rendered: how many
# images decoded (and the alt text of any that did not), and where the recommendation block was laid out.
IMAGE_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var broken = imgs.filter(function (i) { return ok.indexOf(i) < 0; }).map(function (i) { return i.alt; });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-rendered', ok.length);
  document.body.setAttribute('data-images-broken', broken.join('|'));
  var rec = document.getElementById('recommendation');
  if (rec) {
    var box = rec.getBoundingClientRect();
    document.body.setAttribute('data-recommendation-box', [Math.round(box.top), Math.round(box.height)].join(','));
  }
});
"""


def html_page(title: str, body: str) -> str:
    """A self-contained page: ``title`` as its title and heading, then ``body``."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
            f"<script>{IMAGE_CHECK}</script></body></html>")
