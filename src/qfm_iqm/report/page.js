"use strict";
// Draws the report from the JSON in #report-data: summary, histogram, gallery of cards, error cards.
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const scale = data.scale;
  const byId = (id) => document.getElementById(id);
  const rangeLabel = data.coverage ? `${Math.round(100 * data.coverage)}% range` : "range";
  const svgNS = "http://www.w3.org/2000/svg"; // a namespace name, never fetched

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  // Position of a score on the scale, in percent (0: scale.low, 100: scale.high).
  const percent = (value) => Math.min(100, Math.max(0, (100 * (value - scale.low)) / (scale.high - scale.low)));
  // Red (worst) to green (best) along the scale.
  const hue = (value) => 120 * (scale.higherIsBetter ? percent(value) : 100 - percent(value)) / 100;

  function nameNode(photo) {
    const node = el(photo.href ? "a" : "span", "name", photo.name);
    if (photo.href) node.href = photo.href;
    node.title = photo.name;
    return node;
  }

  function scaleBar(photo) {
    const bar = el("div", "scale");
    const described = photo.range ? `, ${rangeLabel} ${photo.range}` : "";
    bar.title = `score ${photo.text}${described} on ${scale.name} ${scale.low}-${scale.high}`;
    if (photo.low !== null) {
      const band = el("span", "range");
      band.style.left = percent(photo.low) + "%";
      band.style.width = percent(photo.high) - percent(photo.low) + "%";
      bar.append(band);
    }
    const mark = el("span", "mark");
    mark.style.left = percent(photo.score) + "%";
    mark.style.background = `hsl(${hue(photo.score)}, 65%, 38%)`;
    bar.append(mark, el("span", "cut"));
    return bar;
  }

  function photoBox(photo, card) {
    const box = el("div", photo.thumb ? "photo" : "photo missing", photo.thumb ? null : photo.preview);
    if (!photo.thumb) return box;
    box.style.aspectRatio = `${photo.width} / ${photo.height}`;
    const img = el("img", "thumb");
    Object.assign(img, { loading: "lazy", decoding: "async", width: photo.width, height: photo.height, alt: photo.name });
    img.src = photo.thumb; // after loading = "lazy", or every thumbnail is fetched at once
    box.append(img);
    if (photo.map) {
      const overlay = el("img", "map");
      Object.assign(overlay, { width: photo.width, height: photo.height, alt: "quality map of " + photo.name, decoding: "async" });
      box.append(overlay);
      card.showMap = (on) => {
        if (on && !overlay.src) overlay.src = photo.map; // fetched only when first shown
        card.classList.toggle("show-map", on);
      };
    }
    return box;
  }

  // A card: the photo's name (and what follows it) in its head; returns the card and its text part.
  function cardFrame(photo, className, ...head) {
    const card = el("article", className);
    card.dataset.path = photo.name;
    const info = el("div", "info");
    const top = el("div", "head");
    top.append(nameNode(photo), ...head);
    info.append(top);
    card.append(info);
    return [card, info];
  }

  function scoreCard(photo) {
    const [card, info] = cardFrame(photo, "card", el("span", "score", photo.text));
    const parts = [];
    if (photo.range) parts.push(`${rangeLabel} ${photo.range}`);
    if (photo.spread) parts.push(`spread ${photo.spread}`);
    info.append(scaleBar(photo), el("div", "numbers", parts.join(" \u00b7 ")), el("span", "flag-note", "below threshold"));
    card.prepend(photoBox(photo, card));
    if (card.showMap) {
      const toggle = el("button", "map-toggle", "quality map");
      toggle.type = "button";
      toggle.addEventListener("click", () => card.showMap(!card.classList.contains("show-map")));
      info.append(toggle);
    }
    return card;
  }

  function errorCard(photo) {
    const [card, info] = cardFrame(photo, "card error");
    info.append(el("p", "reason", photo.error));
    return card;
  }

  const scored = data.photos.filter((photo) => photo.error === null);
  const failed = data.photos.filter((photo) => photo.error !== null);
  const cards = scored.map((photo) => ({ photo, node: scoreCard(photo) }));
  const gallery = byId("gallery");
  const worse = scale.higherIsBetter ? 1 : -1;
  const width = (photo) => (photo.low === null ? 0 : photo.high - photo.low);
  const orders = {
    worst: (a, b) => worse * (a.score - b.score),
    best: (a, b) => worse * (b.score - a.score),
    name: () => 0,
    range: (a, b) => width(b) - width(a),
    spread: (a, b) => (b.uncertainty || 0) - (a.uncertainty || 0),
  };

  function arrange() {
    const order = orders[byId("sort").value];
    cards.sort((a, b) => order(a.photo, b.photo) || a.photo.name.localeCompare(b.photo.name));
    const fragment = document.createDocumentFragment();
    for (const card of cards) fragment.append(card.node);
    gallery.append(fragment);
  }

  function threshold() {
    const value = parseFloat(byId("threshold").value);
    return Number.isFinite(value) ? value : null;
  }

  function drawHistogram(cut) {
    const svg = byId("histogram-plot");
    svg.replaceChildren();
    const [left, right, top, bottom] = [24, 392, 8, 100];
    const counts = new Array(data.bins).fill(0);
    for (const { photo } of cards) counts[Math.min(data.bins - 1, Math.floor((percent(photo.score) / 100) * data.bins))] += 1;
    const most = Math.max(1, ...counts);
    const step = (right - left) / data.bins;
    const shape = (tag, attributes, text) => {
      const node = document.createElementNS(svgNS, tag);
      for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
      if (text !== undefined) node.textContent = text;
      svg.append(node);
      return node;
    };
    counts.forEach((count, i) => {
      const height = ((bottom - top) * count) / most;
      const binLow = scale.low + ((scale.high - scale.low) * i) / data.bins;
      const bar = shape("rect", { class: "bar", x: left + i * step + 1, y: bottom - height, width: step - 2, height });
      bar.classList.toggle("flagged", cut !== null && binLow < cut);
      const tip = document.createElementNS(svgNS, "title");
      tip.textContent = `${count} photos from ${binLow}`;
      bar.append(tip);
    });
    shape("line", { class: "axis", x1: left, x2: right, y1: bottom, y2: bottom });
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      shape("text", { x: left + t * (right - left), y: bottom + 13, "text-anchor": "middle" }, String(scale.low + t * (scale.high - scale.low)));
    }
    shape("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, String(most));
    if (cut !== null) {
      const x = left + (percent(cut) / 100) * (right - left);
      shape("line", { class: "cut", x1: x, x2: x, y1: top - 4, y2: bottom });
    }
  }

  function applyThreshold() {
    const cut = threshold();
    const only = byId("only-flagged").checked;
    let flagged = 0;
    for (const { photo, node } of cards) {
      const below = cut !== null && photo.score < cut;
      flagged += below;
      node.classList.toggle("flagged", below);
      node.hidden = only && !below;
    }
    gallery.classList.toggle("thresholded", cut !== null);
    if (cut !== null) gallery.style.setProperty("--cut", percent(cut) + "%");
    drawHistogram(cut);
    const flagText = cut === null ? "" : `, ${flagged} below ${cut}`;
    const failedText = failed.length ? `, ${failed.length} not scored` : "";
    const sorted = scored.map((photo) => photo.score).sort((a, b) => a - b);
    const median = sorted.length ? (sorted[(sorted.length - 1) >> 1] + sorted[sorted.length >> 1]) / 2 : null;
    const medianText = median === null ? "" : `; median score ${median.toFixed(1)}`;
    byId("summary").textContent = `${data.photos.length} photos in ${data.folder}: ${scored.length} scored${flagText}${failedText}${medianText}`;
  }

  const about = byId("about");
  const direction = scale.higherIsBetter ? "higher is better" : "lower is better";
  about.append(`Model ${data.model}; scores on ${scale.name} ${scale.low}-${scale.high}, ${direction}. Made ${data.created}` + (data.command ? " by " : "."));
  if (data.command) about.append(el("code", null, data.command));

  if (failed.length) {
    byId("errors").hidden = false;
    byId("error-count").textContent = String(failed.length);
    byId("error-cards").append(...failed.map(errorCard));
  }
  if (data.flagBelow !== null) byId("threshold").value = String(data.flagBelow);
  if (cards.some((card) => card.node.showMap)) {
    byId("all-maps-label").hidden = false;
    byId("all-maps").addEventListener("change", (event) => {
      for (const { node } of cards) if (node.showMap) node.showMap(event.target.checked);
    });
  }
  byId("controls").addEventListener("submit", (event) => event.preventDefault());
  byId("sort").addEventListener("change", arrange);
  byId("threshold").addEventListener("input", applyThreshold);
  byId("only-flagged").addEventListener("change", applyThreshold);
  arrange();
  applyThreshold();
  document.documentElement.dataset.renderMs = performance.now().toFixed(0);
  window.addEventListener("load", () => {  // timings and thumbnails shown by then, for measurements
    const root = document.documentElement;
    root.dataset.loadMs = performance.now().toFixed(0);
    root.dataset.thumbnailsLoaded = [...gallery.querySelectorAll("img.thumb")].filter((img) => img.naturalWidth > 0).length;
  });
})();
