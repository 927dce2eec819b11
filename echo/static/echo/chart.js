// The live chart: one line per series over a rolling time window, drawn with uPlot at most once per
// animation frame however fast frames arrive. Knows nothing of sockets.
import uPlot from "../vendor/uplot/uPlot.esm.js";

export const WINDOW_CHOICES = [10, 30, 60, 300, 600]; // seconds; the picker offers these
export const DEFAULT_WINDOW = 60;
// Rows kept, whatever the rate: 10 min at 10 Hz, or 3+ min at 100 Hz. Beyond it the oldest go first.
export const MAX_POINTS = 6000 * 3;
const KEEP_SECONDS = Math.max(...WINDOW_CHOICES);
// A topic's line breaks where its next point comes more than GAP_FACTOR times its recent median interval
// after the previous one, and never for less than GAP_MIN_SECONDS. The factor lets a slow feed (a point
// every 10 s) still be drawn as a line; the floor keeps a fast feed's hiccups (a publisher's GC pause,
// a busy Redis: a second or two) from chopping its line into dashes, while a publisher that stopped
// shows on the default 1 min window as a hole of at least a twelfth of its width.
export const GAP_MIN_SECONDS = 5;
export const GAP_FACTOR = 5;
const GAP_SAMPLES = 20; // intervals per topic the median is taken over

// Readable on light and dark backgrounds alike (mid-lightness, distinct hues).
const PALETTE = ["#1f77d4", "#e4572e", "#17a589", "#a05195", "#c9a000", "#5d9c3b", "#e377c2", "#8c8c8c"];

const CLOCK = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

function clockTime(seconds) {
  return CLOCK.format(new Date(seconds * 1000));
}

/** Index of the first element of sorted `xs` that is >= x (xs.length if none). */
function lowerBound(xs, x) {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

// A JSON event plots at most this many of its numeric fields, so one odd message cannot add a hundred lines.
export const MAX_EVENT_SERIES = 16;

/**
 * The numbers a data frame plots, {series: number}, or null if it has none. A frame of `values` plots
 * them all; a JSON event (`event`, `data`) plots its data if that is a number (series `event`), else the
 * numbers among its data's own fields (series `event.field`; nested fields and text are not plotted).
 */
export function plottedValues(frame) {
  const { event, data, values } = frame;
  if (typeof event !== "string") return values && typeof values === "object" ? values : null;
  if (typeof data === "number") return { [event]: data };
  if (!data || typeof data !== "object" || Array.isArray(data)) return null;
  const numbers = Object.entries(data).filter(([, value]) => typeof value === "number");
  if (!numbers.length) return null;
  const plotted = numbers.slice(0, MAX_EVENT_SERIES).map(([field, value]) => [`${event}.${field}`, value]);
  return Object.fromEntries(plotted);
}

/**
 * The chart's data is one table: a row per data frame (x = its ts), a column per series
 * ("topic/series"). Rows stay sorted by ts, so replayed history can arrive after live points of another
 * topic. uPlot (1.6, spanGaps false) spans `undefined` and breaks the line at `null`, so a cell is:
 *   a number   the series' value in its own topic's row;
 *   undefined  a row of another topic, or a frame that did not carry the series: the line goes on;
 *   null       a row between two points of the topic that are a time gap apart: the line breaks.
 * A gap with no other row inside it gets a row of its own (a "gap row": x = the earlier point's ts, null
 * in its topic's columns), which count() leaves out.
 */
export class LiveChart {
  constructor(element, { windowSeconds = DEFAULT_WINDOW, maxPoints = MAX_POINTS } = {}) {
    this.element = element;
    this.windowSeconds = windowSeconds;
    this.maxPoints = maxPoints;
    this.xs = [];
    this.topicOf = [];
    this.gapRow = []; // true for a row that only marks a gap in its topic's line
    this.columns = new Map(); // series key -> array of number | undefined | null, as long as xs
    this.intervals = new Map(); // topic -> its last GAP_SAMPLES intervals between points, in seconds
    this.colours = new Map();
    this.latest = new Map(); // series key -> {value, ts} of its newest point
    this.newestTs = null;
    this.plot = null;
    this.rebuild = true; // the set of series changed: make a new uPlot
    this.frameRequested = false;
    this.draws = 0;
    new ResizeObserver(() => this.resize()).observe(element);
  }

  /** Called for each new data frame: store what it plots (`plottedValues`), if anything; the chart
   * redraws on the next animation frame. */
  add(frame) {
    const { topic, ts } = frame;
    const values = plottedValues(frame);
    if (typeof topic !== "string" || typeof ts !== "number" || !values) return;
    const at = this.xs.length && ts < this.xs[this.xs.length - 1] ? lowerBound(this.xs, ts) : this.xs.length;
    this.insertRow(at, ts, topic, false);
    for (const [name, value] of Object.entries(values)) {
      const key = `${topic}/${name}`;
      if (!this.columns.has(key)) this.addColumn(key, topic);
      if (typeof value === "number") this.columns.get(key)[at] = value;
      const prev = this.latest.get(key);
      if (!prev || ts >= prev.ts) this.latest.set(key, { value, ts });
    }
    this.joinNeighbours(topic, at);
    if (this.newestTs === null || ts > this.newestTs) this.newestTs = ts;
    // A hidden tab gets no animation frames: bound the memory here too, not only when drawing.
    if (this.xs.length > this.maxPoints * 1.5) this.trim();
    this.requestDraw();
  }

  /** Insert a row at index `at`; its cells are undefined, except inside another topic's gap (null): a
   * gap always has a null row inside, so the new row is in one when a row on either side of it is. */
  insertRow(at, x, topic, gap) {
    this.xs.splice(at, 0, x);
    this.topicOf.splice(at, 0, topic);
    this.gapRow.splice(at, 0, gap);
    for (const [key, column] of this.columns) {
      const inGap = (at > 0 && column[at - 1] === null) || column[at] === null;
      column.splice(at, 0, inGap && !key.startsWith(`${topic}/`) ? null : undefined);
    }
  }

  removeRow(at) {
    this.xs.splice(at, 1);
    this.topicOf.splice(at, 1);
    this.gapRow.splice(at, 1);
    for (const column of this.columns.values()) column.splice(at, 1);
  }

  /** A new series of `topic`: its cells break where the topic's other series break. */
  addColumn(key, topic) {
    const sibling = this.columnsOf(topic)[0];
    const column = sibling
      ? sibling.map((value) => (value === null ? null : undefined))
      : new Array(this.xs.length).fill(undefined);
    this.columns.set(key, column);
    if (!this.colours.has(key)) this.colours.set(key, PALETTE[this.colours.size % PALETTE.length]);
    this.rebuild = true;
  }

  columnsOf(topic) {
    return [...this.columns].filter(([key]) => key.startsWith(`${topic}/`)).map(([, column]) => column);
  }

  /** The row of `topic`'s nearest point before row `at` (step -1) or after it (step 1), or -1. */
  nearestPoint(topic, at, step) {
    for (let i = at + step; i >= 0 && i < this.xs.length; i += step) {
      if (this.topicOf[i] === topic && !this.gapRow[i]) return i;
    }
    return -1;
  }

  /** Join the point just put at row `at` to its topic's points on either side: a line or a gap. */
  joinNeighbours(topic, at) {
    const before = this.nearestPoint(topic, at, -1);
    let row = at;
    if (before >= 0) {
      const interval = this.xs[row] - this.xs[before];
      row = this.joinSegment(topic, before, row);
      // Sampled after the decision: a gap is judged against the intervals before it.
      if (interval > 0) this.sampleInterval(topic, interval);
    }
    const after = this.nearestPoint(topic, row, 1);
    if (after >= 0) this.joinSegment(topic, row, after);
  }

  sampleInterval(topic, seconds) {
    const samples = this.intervals.get(topic) ?? [];
    samples.push(seconds);
    if (samples.length > GAP_SAMPLES) samples.shift();
    this.intervals.set(topic, samples);
  }

  /** How far apart two of `topic`'s points must be for its line to break between them (see GAP_FACTOR). */
  gapSeconds(topic) {
    const samples = this.intervals.get(topic);
    return samples?.length ? Math.max(GAP_MIN_SECONDS, GAP_FACTOR * median(samples)) : GAP_MIN_SECONDS;
  }

  /** Make the cells of `topic` between its consecutive points at rows a < b null if b came a gap after
   * a, else undefined; a gap with no row inside gets a gap row. Returns b's row, which that moves. */
  joinSegment(topic, a, b) {
    const broken = this.xs[b] - this.xs[a] > this.gapSeconds(topic);
    for (let i = b - 1; i > a; i--) {
      if (this.gapRow[i] && this.topicOf[i] === topic) {
        this.removeRow(i);
        b -= 1;
      }
    }
    if (broken && b === a + 1) {
      this.insertRow(b, this.xs[a], topic, true);
      b += 1;
    }
    const cell = broken ? null : undefined;
    for (const column of this.columnsOf(topic)) column.fill(cell, a + 1, b);
    return b;
  }

  /** Judge every segment of every topic afresh (after rows were taken out from between them). */
  rejoin() {
    for (const topic of new Set(this.topicOf)) {
      let before = -1;
      for (let i = 0; i < this.xs.length; i++) {
        if (this.topicOf[i] !== topic || this.gapRow[i]) continue;
        if (before >= 0) i = this.joinSegment(topic, before, i);
        before = i;
      }
    }
  }

  /** Forget one topic's points, series and intervals (its history follows a "reset" frame). */
  resetTopic(topic) {
    this.keepRows((t) => t !== topic);
    for (const key of [...this.columns.keys()]) {
      if (key.startsWith(`${topic}/`)) {
        this.columns.delete(key);
        this.latest.delete(key);
      }
    }
    this.intervals.delete(topic);
    // The topic's rows may have been all that kept another topic's gap open.
    this.rejoin();
    this.rebuild = true;
    this.requestDraw();
  }

  /** Forget every topic not in `topics` (the user stopped watching them). */
  keepTopics(topics) {
    for (const topic of new Set(this.topicOf)) if (!topics.includes(topic)) this.resetTopic(topic);
  }

  setWindow(seconds) {
    this.windowSeconds = seconds;
    this.requestDraw();
  }

  /** The colour of a series' line, for the legend. */
  colour(key) {
    return this.colours.get(key);
  }

  /** How many points the chart holds for `topic`, or for all topics (gap rows are not points). */
  count(topic) {
    return this.topicOf.reduce((n, t, i) => n + ((topic === undefined || t === topic) && !this.gapRow[i]), 0);
  }

  keepRows(keep) {
    const rows = this.xs.map((_, i) => i).filter((i) => keep(this.topicOf[i]));
    this.xs = rows.map((i) => this.xs[i]);
    this.topicOf = rows.map((i) => this.topicOf[i]);
    this.gapRow = rows.map((i) => this.gapRow[i]);
    for (const [key, column] of this.columns) this.columns.set(key, rows.map((i) => column[i]));
  }

  /** Drop rows older than the longest window, and the oldest beyond maxPoints. */
  trim() {
    const cutoff = this.right() - KEEP_SECONDS;
    const start = Math.max(lowerBound(this.xs, cutoff), this.xs.length - this.maxPoints);
    if (start <= 0) return;
    this.xs.splice(0, start);
    this.topicOf.splice(0, start);
    this.gapRow.splice(0, start);
    for (const column of this.columns.values()) column.splice(0, start);
  }

  /** The right edge of the window: now, or the newest point if the server's clock is ahead. */
  right() {
    return Math.max(Date.now() / 1000, this.newestTs ?? 0);
  }

  requestDraw() {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => {
      this.frameRequested = false;
      this.draw();
    });
  }

  draw() {
    this.trim();
    const data = [this.xs, ...this.columns.values()];
    if (this.rebuild || !this.plot) {
      this.plot?.destroy();
      this.plot = new uPlot(this.options(), data, this.element);
      this.rebuild = false;
    } else {
      this.plot.setData(data);
    }
    this.draws += 1;
  }

  /** Each topic gets its own y scale, so a price near 100 and a wave near 0 both fill the height;
   * the first topic's axis is on the left, the second's on the right, any others have none. */
  options() {
    const ink = getComputedStyle(this.element).color;
    const grid = "rgba(128, 128, 128, 0.25)";
    const axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const keys = [...this.columns.keys()];
    const topicOfKey = (key) => key.slice(0, key.indexOf("/"));
    const topics = [...new Set(keys.map(topicOfKey))];
    const yAxes = topics.length
      ? topics.slice(0, 2).map((topic, i) => ({
          ...axis,
          scale: topic,
          label: topic,
          labelSize: 18,
          size: 60,
          side: i === 0 ? 3 : 1,
          grid: i === 0 ? axis.grid : { show: false },
        }))
      : [{ ...axis, size: 60 }];
    return {
      ...this.size(),
      legend: { show: false }, // the page's own legend shows each series' latest value
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true, range: () => [this.right() - this.windowSeconds, this.right()] },
        ...Object.fromEntries(topics.map((topic) => [topic, { auto: true }])),
      },
      axes: [
        // Local wall-clock time, one line per label, so labels never overlap on a narrow screen.
        { ...axis, space: 70, values: (u, splits) => splits.map(clockTime) },
        ...yAxes,
      ],
      series: [
        {},
        ...keys.map((key) => ({
          label: key,
          scale: topicOfKey(key),
          stroke: this.colours.get(key),
          width: 1.5,
          spanGaps: false, // break at null (a time gap), span undefined (another topic's row)
          points: { show: false },
        })),
      ],
    };
  }

  size() {
    const width = Math.max(200, this.element.clientWidth);
    return { width, height: width < 500 ? 220 : 320 };
  }

  resize() {
    if (this.plot) this.plot.setSize(this.size());
  }

  /** Keep the window sliding while no data arrives (called about once a second). */
  tick() {
    if (this.xs.length) this.requestDraw();
  }
}
