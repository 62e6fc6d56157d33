// Line charts as inline SVG strings, drawn at the container's real pixel size so
// text and markers keep their size on a phone and on a wide screen alike.
//
// Blue and green must never be told apart by hue alone: blue is a solid line with
// round markers, green a dashed line with square markers, and the legend beside
// every chart says which is which in words.

import { escape } from "./format.js";

/** How each color's line looks; the legend in app.js draws the same shapes. */
export const SERIES_STYLE = {
  blue: { dash: "", marker: "circle" },
  green: { dash: "7 4", marker: "square" },
};

const HEIGHT = 150;
const PAD = { left: 48, right: 12, top: 10, bottom: 22 };

/** Rounds up to 1, 2 or 5 times a power of ten, for readable axis maxima. */
function niceCeiling(value) {
  if (!(value > 0)) return 0;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

function markerPath(shape, x, y) {
  if (shape === "square") {
    return `M${(x - 3.5).toFixed(1)} ${(y - 3.5).toFixed(1)}h7v7h-7z`;
  }
  // A circle as two arcs, so every marker is one path element.
  return `M${(x - 4).toFixed(1)} ${y.toFixed(1)}a4 4 0 1 0 8 0a4 4 0 1 0 -8 0`;
}

/**
 * @param {object} chart
 * @param {string} chart.label     what is plotted, for the accessible name
 * @param {number} chart.width     pixels
 * @param {number} chart.from      window start, ms since the epoch
 * @param {number} chart.to        window end
 * @param {number} chart.floorMax  the smallest y maximum (so noise near 0 stays flat)
 * @param {(v: number) => string} chart.format  y labels
 * @param {{color: string, points: [number, number|null][]}[]} chart.series
 * @returns {string} an <svg> element
 */
export function lineChart({ label, width, from, to, floorMax, format, series }) {
  const w = Math.max(200, Math.round(width));
  const plotW = w - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  let max = floorMax;
  for (const s of series) {
    for (const [, v] of s.points) if (v !== null && v > max) max = v;
  }
  max = niceCeiling(max) || floorMax;
  const span = Math.max(1, to - from);
  const x = (t) => PAD.left + ((t - from) / span) * plotW;
  const y = (v) => PAD.top + plotH - (v / max) * plotH;

  const parts = [];
  // Grid and y labels at 0, half and max.
  for (const share of [0, 0.5, 1]) {
    const gy = y(max * share).toFixed(1);
    parts.push(
      `<line class="grid" x1="${PAD.left}" x2="${w - PAD.right}" y1="${gy}" y2="${gy}"/>`,
      `<text class="axis" x="${PAD.left - 6}" y="${gy}" text-anchor="end" dominant-baseline="middle">${escape(format(max * share))}</text>`,
    );
  }
  const start = span >= 90_000 ? `−${Math.round(span / 60_000)} min` : `−${Math.round(span / 1000)} s`;
  parts.push(
    `<text class="axis" x="${PAD.left}" y="${HEIGHT - 4}">${start}</text>`,
    `<text class="axis" x="${w - PAD.right}" y="${HEIGHT - 4}" text-anchor="end">now</text>`,
  );

  for (const s of series) {
    const style = SERIES_STYLE[s.color];
    // A null reading (no responses) breaks the line instead of drawing a fake 0.
    let d = "";
    let pen = false;
    for (const [t, v] of s.points) {
      if (v === null || t < from) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${x(t).toFixed(1)} ${y(v).toFixed(1)}`;
      pen = true;
    }
    if (d) {
      parts.push(
        `<path class="line line-${s.color}" d="${d}"${style.dash ? ` stroke-dasharray="${style.dash}"` : ""}/>`,
      );
    }
    // Markers every ~40 px keep the shapes visible without cluttering the line.
    const every = Math.max(1, Math.round(40 / Math.max(1, plotW / Math.max(1, s.points.length))));
    let markers = "";
    s.points.forEach(([t, v], i) => {
      const last = i === s.points.length - 1;
      if (v === null || t < from || (i % every !== 0 && !last)) return;
      markers += markerPath(style.marker, x(t), y(v));
    });
    if (markers) parts.push(`<path class="marker marker-${s.color}" d="${markers}"/>`);
  }

  return (
    `<svg class="chart" width="${w}" height="${HEIGHT}" viewBox="0 0 ${w} ${HEIGHT}" role="img" aria-label="${escape(label)}">` +
    `<title>${escape(label)}</title>${parts.join("")}</svg>`
  );
}

/** A small legend swatch: the line style and marker of a color, as an SVG string. */
export function legendSwatch(color) {
  const style = SERIES_STYLE[color];
  return (
    `<svg class="swatch" width="30" height="12" viewBox="0 0 30 12" aria-hidden="true">` +
    `<path class="line line-${color}" d="M1 6H29"${style.dash ? ` stroke-dasharray="${style.dash}"` : ""}/>` +
    `<path class="marker marker-${color}" d="${markerPath(style.marker, 15, 6)}"/></svg>`
  );
}
