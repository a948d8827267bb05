// Reading a Prometheus histogram out of two /metrics scrapes.

/** Cumulative bucket counts `{le: count}` of `name` (summed over label sets). */
function buckets(text, name) {
  const out = new Map();
  const re = new RegExp(`^${name}_bucket\\{(?:[^}]*,)?le="([^"]+)"[^}]*\\} (\\S+)$`, 'gm');
  for (const m of text.matchAll(re)) {
    const le = m[1] === '+Inf' ? Infinity : Number(m[1]);
    out.set(le, (out.get(le) ?? 0) + Number(m[2]));
  }
  return out;
}

/** The histogram of the observations made between the two scrapes, or null if absent. */
export function histogramDelta(before, after, name) {
  const a = buckets(after, name);
  if (a.size === 0) return null;
  const b = buckets(before, name);
  return [...a.entries()].sort((x, y) => x[0] - y[0]).map(([le, c]) => [le, c - (b.get(le) ?? 0)]);
}

/** Quantile by linear interpolation inside the bucket, as Prometheus' histogram_quantile does. */
export function histogramQuantile(h, q) {
  const total = h[h.length - 1][1];
  if (total === 0) return NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of h) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(1, count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/** The mean of the observations made between the two scrapes (`_sum` over `_count`), or NaN. */
export function histogramMean(before, after, name) {
  const total = (text, suffix) => {
    const re = new RegExp(`^${name}_${suffix}(?:\\{[^}]*\\})? (\\S+)$`, 'gm');
    return [...text.matchAll(re)].reduce((s, m) => s + Number(m[1]), 0);
  };
  const count = total(after, 'count') - total(before, 'count');
  return count > 0 ? (total(after, 'sum') - total(before, 'sum')) / count : NaN;
}
