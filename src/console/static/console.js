// The step-worker console. Rules this file keeps:
// - Text from the queue (job ids, step names, reasons, errors, outputs) is only ever set with
//   textContent or passed to createTextNode: nothing here parses a string as HTML.
// - The admin token lives in this tab's sessionStorage and travels as an Authorization header;
//   requests carry no cookie (credentials: 'omit').
'use strict';

const TOKEN_KEY = 'step-worker.admin-token';
// How often the page polls: the overview is cached by the worker for 2 s, so faster gains nothing.
const POLL_MS = 5000;
const $ = (id) => document.getElementById(id);

let previous = null; // the last overview, for the per-minute rates
let shownJob = null; // the job id the job panel follows
let pendingReplay = null; // the request a confirmation would send
let timer = null;

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit',
    cache: 'no-store',
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401) throw new Unauthorized((data && data.error) || 'a valid admin token is required');
  if (!response.ok) {
    const error = new Error((data && data.error) || 'HTTP ' + response.status);
    error.status = response.status;
    throw error;
  }
  return data;
}

// A new element whose children are elements or plain text (never markup).
function el(tag, children, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of [].concat(children === undefined ? [] : children)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function button(label, onClick) {
  const b = el('button', label);
  b.type = 'button';
  b.addEventListener('click', onClick);
  return b;
}

function row(cells) {
  return el('tr', cells.map((c) => (c instanceof Node && c.tagName === 'TD' ? c : el('td', c))));
}

function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) {
    const td = el('td', emptyText, 'muted');
    td.colSpan = columns;
    tbody.append(el('tr', td));
  }
}

function notice(text, kind) {
  const n = $('notice');
  n.textContent = text;
  n.className = kind || 'info';
  n.hidden = !text;
}

function when(iso) {
  return iso ? new Date(iso).toISOString().replace('T', ' ').replace('Z', ' UTC') : '-';
}

function showLogin(message) {
  clearInterval(timer);
  timer = null;
  $('console').hidden = true;
  $('login').hidden = false;
  $('forget-token').hidden = true;
  if (message) notice(message, 'error');
  $('token').focus();
}

function showConsole() {
  $('login').hidden = true;
  $('console').hidden = false;
  $('forget-token').hidden = !sessionStorage.getItem(TOKEN_KEY);
  if (!timer) timer = setInterval(() => refresh().catch(() => {}), POLL_MS);
}

function renderOverview(o) {
  $('queue-name').textContent = o.queue + ' (' + o.queue_driver + ', ' + o.store_driver + ')';
  const state = $('queue-state');
  state.textContent = o.paused ? 'PAUSED' : 'running';
  state.className = 'badge ' + (o.paused ? 'paused' : 'running');
  $('this-worker').textContent = o.worker_id;
  const d = o.depths;
  const depths = [
    ['ready', d.ready], ['delayed (retries)', d.delayed], ['in flight', d.in_flight],
    ['held (paused steps)', d.held], ['poison outbox', d.poison], ['dead letters not replayed', d.dead],
  ];
  $('depths').replaceChildren(...depths.map(([name, n]) => el('tr', [el('th', name), el('td', n, 'num')])));
  fill($('workers'), o.workers.map((w) => row([
    w.worker_id, (w.last_heartbeat_ms_ago / 1000).toFixed(1) + ' s ago', w.in_flight,
  ])), 'no live worker', 3);
  fill($('paused-steps'), o.paused_steps.map((p) => row([
    p.step, p.held, el('td', button('Resume', () => act('/api/resume', { step: p.step }))),
  ])), 'no step is paused', 3);
  fill($('steps'), o.steps.map((s) => stepRow(s, o)), 'no job has run on this worker yet', 7);
  previous = o;
}

function counts(outcomes) {
  const n = (k) => outcomes[k] || 0;
  return {
    succeeded: n('succeeded'),
    failed: n('failed') + n('timed_out') + n('panicked'),
    dead: n('dead'),
    retried: n('retried'),
  };
}

function stepRow(s, now) {
  const c = counts(s.outcomes);
  const attempts = c.succeeded + c.failed;
  const share = attempts ? ((100 * c.failed) / attempts).toFixed(1) + ' %' : '-';
  let rate = '-';
  const before = previous && previous.steps.find((p) => p.step === s.step);
  if (previous && before) {
    const minutes = (new Date(now.at) - new Date(previous.at)) / 60000;
    const b = counts(before.outcomes);
    if (minutes > 0) rate = ((c.succeeded + c.dead - b.succeeded - b.dead) / minutes).toFixed(1);
  }
  return row([s.step, c.succeeded, c.failed, c.dead, c.retried, share, rate]);
}

function filterValues() {
  return { step: $('dlq-step').value.trim(), reason: $('dlq-reason').value.trim() };
}

function renderDeadLetters(list) {
  $('dead-total').textContent = '(' + list.total + ' not replayed' + (list.total > list.letters.length ? ', newest ' + list.letters.length + ' shown' : '') + ')';
  fill($('dead-letters'), list.letters.map((l) => {
    const id = l.job_id === null ? '-' : l.job_id;
    const open = l.job_id === null ? el('span', '-') : button(id, () => showJob(l.job_id).catch(failed));
    open.className = 'link';
    const error = el('td', l.error === null ? '' : l.error, 'error');
    return row([
      when(l.dead_at), el('td', open), l.step === null ? '-' : l.step, l.reason, error, l.attempts,
      el('td', button('Replay', () => dryRun({ id: l.id }, id).catch(failed))),
    ]);
  }), 'no dead letter', 7);
}

async function dryRun(request, label) {
  const answer = await api('POST', '/api/dead-letters/replay', Object.assign({ dry_run: true }, request));
  pendingReplay = Object.assign({}, request, { before: answer.as_of, label });
  $('confirm-text').textContent = answer.would_replay + ' dead letter(s) would be replayed'
    + (label ? ' (job ' + label + ')' : '') + '. Replay them?';
  $('confirm-list').replaceChildren(...answer.letters.map((l) => el('li', [
    when(l.dead_at) + ' ', el('code', l.job_id === null ? '-' : l.job_id), ' ' + (l.step || '-') + ' (' + l.reason + ')',
  ])));
  $('confirm-yes').disabled = answer.would_replay === 0;
  $('confirm').hidden = false;
}

async function confirmReplay() {
  if (!pendingReplay) return;
  const request = pendingReplay;
  pendingReplay = null;
  $('confirm').hidden = true;
  const body = { id: request.id, step: request.step, reason: request.reason, before: request.before };
  const answer = await api('POST', '/api/dead-letters/replay', body);
  notice('replayed ' + answer.replayed + ' dead letter(s) onto the queue', 'info');
  if (request.id && request.label && request.label !== '-') {
    shownJob = request.label;
    $('job-id').value = shownJob;
  }
  await refresh();
}

async function act(path, body) {
  try {
    const answer = await api('POST', path, body);
    const what = answer.step === undefined ? 'the queue' : 'step ' + answer.step;
    const released = answer.released === undefined ? '' : ' (' + answer.released + ' held job(s) released)';
    notice((answer.paused ? 'paused ' : 'resumed ') + what + released + '; workers see it within a heartbeat', 'info');
    await refresh();
  } catch (e) {
    failed(e);
  }
}

async function showJob(id) {
  shownJob = id;
  $('job-id').value = id;
  await refreshJob();
}

async function refreshJob() {
  if (shownJob === null) return;
  const dl = $('job-result');
  $('job').hidden = false;
  let job;
  try {
    job = await api('GET', '/api/jobs/' + encodeURIComponent(shownJob));
  } catch (e) {
    if (e.status !== 404) throw e;
    dl.replaceChildren(el('dt', 'job id'), el('dd', shownJob), el('dt', 'status'), el('dd', 'no result yet (' + e.message + ')'));
    $('job-attempts').replaceChildren();
    $('cancel-job').hidden = false;
    return;
  }
  $('cancel-job').hidden = job.result !== null;
  const r = job.result;
  const fields = [['job id', job.job_id]];
  if (r) {
    fields.push(['status', el('span', r.status, 'status status-' + r.status)], ['attempts', r.attempts],
      ['finished at', when(r.finished_at)], ['worker', r.worker_id]);
    if (r.error !== null) fields.push(['error', el('span', r.error, 'error')]);
    if (r.output !== null) fields.push(['output', el('pre', JSON.stringify(r.output, null, 2))]);
  } else {
    fields.push(['status', 'no result yet: queued, running or waiting for a retry']);
  }
  dl.replaceChildren(...fields.flatMap(([k, v]) => [el('dt', k), el('dd', v)]));
  fill($('job-attempts'), job.attempts.map((a) => row([
    a.attempt, a.outcome, el('td', a.error === null ? '' : a.error, 'error'), when(a.started_at), when(a.finished_at), a.worker_id,
  ])), 'no failed attempt', 6);
}

// Cancels the job the panel shows, after the operator confirms (DELETE /jobs/{id}'s answers).
async function cancelJob() {
  const id = shownJob;
  if (id === null || !window.confirm('Cancel job ' + id + '? A waiting job never runs; a running one is stopped.')) return;
  const answer = await api('POST', '/api/jobs/' + encodeURIComponent(id) + '/cancel', {});
  notice(answer.status === 'cancelling'
    ? 'job ' + id + ' is being cancelled on worker ' + answer.worker_id + ' (within a heartbeat)'
    : 'job ' + id + ' cancelled', 'info');
  await refresh();
}

async function refresh() {
  try {
    const overview = await api('GET', '/api/overview');
    showConsole();
    renderOverview(overview);
    const f = filterValues();
    const query = new URLSearchParams();
    if (f.step) query.set('step', f.step);
    if (f.reason) query.set('reason', f.reason);
    try {
      renderDeadLetters(await api('GET', '/api/dead-letters?' + query));
    } catch (e) {
      $('dead-total').textContent = '(' + e.message + ')';
    }
    await refreshJob();
    $('refreshed').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    failed(e);
  }
}

function failed(e) {
  if (e instanceof Unauthorized) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(e.message);
  } else {
    notice(e.message, 'error');
  }
}

function wire() {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token').value = '';
    notice('', '');
    refresh();
  });
  $('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('token forgotten');
  });
  $('pause-queue').addEventListener('click', () => act('/api/pause', {}));
  $('resume-queue').addEventListener('click', () => act('/api/resume', {}));
  $('pause-step-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    act('/api/pause', { step: $('pause-step').value.trim() });
  });
  $('dlq-filter').addEventListener('submit', (ev) => {
    ev.preventDefault();
    refresh();
  });
  $('replay-matching').addEventListener('click', () => dryRun(filterValues(), null).catch(failed));
  $('confirm-yes').addEventListener('click', () => confirmReplay().catch(failed));
  $('confirm-no').addEventListener('click', () => {
    pendingReplay = null;
    $('confirm').hidden = true;
  });
  $('cancel-job').addEventListener('click', () => cancelJob().catch(failed));
  $('job-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    showJob($('job-id').value.trim()).catch(failed);
  });
}

document.addEventListener('DOMContentLoaded', () => {
  wire();
  refresh();
});
