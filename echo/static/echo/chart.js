// The live chart: one line per series over a rolling time window, drawn with uPlot at most once per
// animation frame however fast frames arrive. Knows nothing of sockets.
import uPlot from "../vendor/uplot/uPlot.esm.js";

export const WINDOW_CHOICES = [10, 30, 60, 300, 600]; // seconds; the picker offers these
export const DEFAULT_WINDOW = 60;
// Rows kept, whatever the rate: 10 min at 10 Hz, or 3+ min at 100 Hz. Beyond it the oldest go first.
export const MAX_POINTS = 6000 * 3;
const KEEP_SECONDS = Math.max(...WINDOW_CHOICES);

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

/**
 * The chart's data is one table: a row per data frame (x = its ts), a column per series
 * ("topic/series"), null where a row's frame did not carry that series; lines span the nulls.
 * Rows stay sorted by ts, so replayed history can arrive after live points of another topic.
 */
export class LiveChart {
  constructor(element, { windowSeconds = DEFAULT_WINDOW, maxPoints = MAX_POINTS } = {}) {
    this.element = element;
    this.windowSeconds = windowSeconds;
    this.maxPoints = maxPoints;
    this.xs = [];
    this.topicOf = [];
    this.columns = new Map(); // series key -> array of numbers or null, as long as xs
    this.colours = new Map();
    this.latest = new Map(); // series key -> {value, ts} of its newest point
    this.newestTs = null;
    this.plot = null;
    this.rebuild = true; // the set of series changed: make a new uPlot
    this.frameRequested = false;
    this.draws = 0;
    new ResizeObserver(() => this.resize()).observe(element);
  }

  /** Called for each new data frame: store it; the chart redraws on the next animation frame. */
  add(frame) {
    const { topic, ts, values } = frame;
    if (typeof ts !== "number" || !values || typeof values !== "object") return;
    const at = this.xs.length && ts < this.xs[this.xs.length - 1] ? lowerBound(this.xs, ts) : this.xs.length;
    this.xs.splice(at, 0, ts);
    this.topicOf.splice(at, 0, topic);
    for (const [name, value] of Object.entries(values)) {
      const key = `${topic}/${name}`;
      if (!this.columns.has(key)) {
        this.columns.set(key, new Array(this.xs.length - 1).fill(null));
        if (!this.colours.has(key)) this.colours.set(key, PALETTE[this.colours.size % PALETTE.length]);
        this.rebuild = true;
      }
      const prev = this.latest.get(key);
      if (!prev || ts >= prev.ts) this.latest.set(key, { value, ts });
    }
    for (const [key, column] of this.columns) {
      const value = values[key.slice(topic.length + 1)];
      column.splice(at, 0, key.startsWith(`${topic}/`) && typeof value === "number" ? value : null);
    }
    if (this.newestTs === null || ts > this.newestTs) this.newestTs = ts;
    // A hidden tab gets no animation frames: bound the memory here too, not only when drawing.
    if (this.xs.length > this.maxPoints * 1.5) this.trim();
    this.requestDraw();
  }

  /** Forget one topic's points and series (its history follows a "reset" frame). */
  resetTopic(topic) {
    this.keepRows((t) => t !== topic);
    for (const key of [...this.columns.keys()]) {
      if (key.startsWith(`${topic}/`)) {
        this.columns.delete(key);
        this.latest.delete(key);
      }
    }
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

  /** How many points (rows) the chart holds for `topic`, or for all topics. */
  count(topic) {
    if (topic === undefined) return this.xs.length;
    return this.topicOf.reduce((n, t) => n + (t === topic), 0);
  }

  keepRows(keep) {
    const rows = this.xs.map((_, i) => i).filter((i) => keep(this.topicOf[i]));
    this.xs = rows.map((i) => this.xs[i]);
    this.topicOf = rows.map((i) => this.topicOf[i]);
    for (const [key, column] of this.columns) this.columns.set(key, rows.map((i) => column[i]));
  }

  /** Drop rows older than the longest window, and the oldest beyond maxPoints. */
  trim() {
    const cutoff = this.right() - KEEP_SECONDS;
    const start = Math.max(lowerBound(this.xs, cutoff), this.xs.length - this.maxPoints);
    if (start <= 0) return;
    this.xs.splice(0, start);
    this.topicOf.splice(0, start);
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
          spanGaps: true,
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
