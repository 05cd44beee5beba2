"""The console's page: one HTML document, its script and stylesheet (served, never fetched).

The HTML is a fixed skeleton with the network map inline (so the script can
colour its markers); everything else is drawn by ``static/console.js`` from the
state it receives over Server-Sent Events, with DOM text nodes only (no
``innerHTML``: controller ids and messages come from outside). There is no
inline script or style, so the Content-Security-Policy can allow ``'self'`` only.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files

from controller.console.network_map import MAP_STATUSES

__all__ = ["FAVICON", "render_page", "static_asset"]

#: a traffic light's green lamp; served so that browsers do not ask for /favicon.ico
FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<circle cx="8" cy="8" r="7" fill="#2f6fb0"/></svg>'
)


def static_asset(name: str) -> bytes:
    """The bytes of ``static/NAME`` (``console.js``, ``console.css``)."""
    return (files("controller.console") / "static" / name).read_bytes()


def render_page(map_svg: str, network_id: str) -> bytes:
    """The page, with ``map_svg`` (already escaped markup) inline."""
    legend = "".join(
        f'<li><span class="swatch" data-status="{escape(status)}"></span>{escape(text)}</li>'
        for status, text in MAP_STATUSES.items()
    )
    title = escape(network_id)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>signaltwin console: {title}</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/console.css">
<script src="/console.js" defer></script>
</head>
<body>
<header>
  <h1>signaltwin <span class="sub">operator console</span></h1>
  <p class="facts"><span id="network">{title}</span> <span id="mode"></span>
    <span id="schedule"></span></p>
  <p id="connection" class="connection" data-state="connecting">connecting</p>
</header>
<main>
  <section id="now" class="panel now" aria-live="polite">
    <p id="status-line">waiting for the first cycle</p>
    <p id="ledger-line" class="hint"></p>
  </section>
  <section id="cycles-panel" class="panel">
    <h2>Last cycles</h2>
    <p class="hint">Each bar is the twin's predicted change of waiting time with its
      interval; the dashed line is the gate's threshold. Solid: the whole interval clears
      it; pale: it straddles it; grey: it falls short; outlined: refused for its NOx.
      Open a row for every candidate and the gate's reasons.</p>
    <div id="cycles" class="cycles"><p class="empty">no cycle yet</p></div>
  </section>
  <div class="columns">
    <section id="map-panel" class="panel">
      <h2>Plans in force</h2>
      <div id="map" class="map">{map_svg}</div>
      <ul class="legend">{legend}</ul>
      <p id="map-detail" class="detail hint">Select an intersection for its plan.</p>
    </section>
    <section id="health-panel" class="panel">
      <h2>Controllers</h2>
      <p id="health-summary">no observation yet</p>
      <div id="health-grid" class="health-grid"></div>
      <p id="health-down" class="hint"></p>
    </section>
  </div>
  <section id="deployments-panel" class="panel">
    <h2>Predicted against measured</h2>
    <p class="hint">For each deployment: the change of waiting time the twin predicted
      (upper bar) and the one estimated in the field afterwards (lower bar), with intervals.</p>
    <div id="deployments" class="deployments"><p class="empty">no deployment yet</p></div>
  </section>
  <section id="video-panel" class="panel">
    <h2>Latest what-if video</h2>
    <div id="video"><p class="empty">no video yet (one is rendered for each plan that
      passes the gate)</p></div>
  </section>
</main>
<noscript><p>The console draws itself with JavaScript; <a href="/api/state">/api/state</a>
  has the same data as JSON.</p></noscript>
</body>
</html>
""".encode()
