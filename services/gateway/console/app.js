// The LLM Mesh console: Preact + htm (no build step) over the gateway's own HTTP API.
// The credential lives in this tab's sessionStorage and travels only as an Authorization
// header: there is no cookie, so another site cannot ride it.
import { h, render } from "./vendor/preact.mjs";
import { useCallback, useEffect, useRef, useState } from "./vendor/preact-hooks.mjs";
import htm from "./vendor/htm.mjs";

const html = htm.bind(h);
const TOKEN_KEY = "llmmesh.token";
const VIEWS = ["overview", "models", "playground", "jobs", "training", "analytics", "logs", "settings"];

// ---- the API ------------------------------------------------------------------------------

const REASON_KEY = "llmmesh.signed-out-because";
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

// The gateway refused this tab's credential (an expired JWT, a revoked key): back to sign-in,
// saying why, instead of views that each show the error or nothing.
function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (reason) sessionStorage.setItem(REASON_KEY, reason);
  location.hash = "#/overview";
  location.reload();
}
// The gateway's own test: a three-part JWT is a superuser's; anything else is an API key.
const isSuperuser = () => token().startsWith("eyJ") && token().split(".").length === 3;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function errorMessage(body) {
  const error = body && body.error;
  if (!error) return "";
  return typeof error === "string" ? error : error.message || JSON.stringify(error);
}

function request(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
}

async function api(path, options = {}) {
  const response = await request(path, options);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  if (!response.ok && !(options.accept || []).includes(response.status)) {
    const message = errorMessage(data) || `${response.status} ${response.statusText}`;
    if (response.status === 401 && token() && !options.signingIn) signOut(message);
    throw new ApiError(response.status, message);
  }
  return data;
}

// Server-sent events over fetch (EventSource cannot send an Authorization header).
async function* sse(path, options = {}) {
  const response = await request(path, options);
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    const message = errorMessage(body) || `${response.status} ${response.statusText}`;
    if (response.status === 401 && token()) signOut(message);
    throw new ApiError(response.status, message);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue; // a comment (": waiting ...") or a bare event line
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(0, errorMessage(event));
      yield event;
    }
  }
}

// ---- small pieces -------------------------------------------------------------------------

function usePoll(load, seconds, deps = []) {
  const [state, setState] = useState({ data: null, error: null });
  const reload = useCallback(async () => {
    try {
      setState({ data: await load(), error: null });
    } catch (error) {
      setState((old) => ({ data: old.data, error }));
    }
  }, deps);
  useEffect(() => {
    reload();
    if (!seconds) return undefined;
    const timer = setInterval(reload, seconds * 1000);
    return () => clearInterval(timer);
  }, [reload]);
  return [state.data, state.error, reload];
}

const Card = ({ title, children, actions }) => html`
  <section class="card">
    <div class="row" style="justify-content: space-between"><h2>${title}</h2>${actions}</div>
    ${children}
  </section>`;

const ErrorLine = ({ error }) => (error ? html`<p class="error" role="alert">${error.message || String(error)}</p>` : null);

const StateBadge = ({ value }) => {
  const good = ["SERVING", "ok", "up", "loaded", "succeeded", "closed", "true", true];
  const bad = ["NOT_SERVING", "UNKNOWN", "unavailable", "unreachable", "failed", "open", "false", false, "expired", "cancelled"];
  const tone = good.includes(value) ? "ok" : bad.includes(value) ? "bad" : "warn";
  return html`<span class="badge ${tone}">${String(value)}</span>`;
};

const Table = ({ columns, rows, empty = "Nothing yet.", id }) => html`
  <div class="scroll">
    <table id=${id}>
      <thead><tr>${columns.map(([label]) => html`<th>${label}</th>`)}</tr></thead>
      <tbody>
        ${rows.length
          ? rows.map((row) => html`<tr>${columns.map(([, cell]) => html`<td>${cell(row)}</td>`)}</tr>`)
          : html`<tr><td colspan=${columns.length} class="muted">${empty}</td></tr>`}
      </tbody>
    </table>
  </div>`;

// Unix seconds as the browser's local date and time, compact and unambiguous: 2026-12-05 11:01:49.
const pad = (n) => String(n).padStart(2, "0");
const when = (seconds) => {
  if (!seconds) return "";
  const d = new Date(seconds * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
};
const span = (seconds) => (seconds < 60 ? `${seconds.toFixed(1)} s` : seconds < 3600
  ? `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s` : `${(seconds / 3600).toFixed(1)} h`);
const AdminOnly = () => html`<p class="muted">Sign in with a superuser JWT to manage this.</p>`;

// A uPlot chart whose data is replaced in place; the width follows its container.
function Chart({ title, series, data, id }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const width = () => Math.max(240, box.current.clientWidth);
    plot.current = new uPlot(
      {
        title,
        width: width(),
        height: 200,
        scales: { x: { time: series.time !== false } },
        series: [{}, ...series.lines.map((label, i) => ({
          label, stroke: ["#3b5bdb", "#e67700", "#c92a2a", "#2b8a3e"][i], width: 2, spanGaps: true,
          // Sparse series (TTFT has gaps where nothing streamed) show their lone points.
          ...(series.points ? { points: { show: true, size: 5 } } : {}),
        }))],
        // Steps are whole numbers: no 1.5 ticks on a loss chart's x axis.
        axes: [{ stroke: "#888", ...(series.time === false ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] } : {}) }, { stroke: "#888" }],
      },
      data,
      box.current,
    );
    const resize = () => plot.current.setSize({ width: width(), height: 200 });
    window.addEventListener("resize", resize);
    return () => {
      window.removeEventListener("resize", resize);
      plot.current.destroy();
    };
  }, []);
  useEffect(() => plot.current && plot.current.setData(data), [data]);
  return html`<div class="chart" id=${id} ref=${box}></div>`;
}

// ---- overview -----------------------------------------------------------------------------

function Overview() {
  const [health, healthError] = usePoll(() => api("/health", { accept: [503] }), 5);
  const [models] = usePoll(() => api("/v1/models"), 5);
  const [summary] = usePoll(() => api("/metrics/summary"), 5);
  const [nodes, nodesError] = usePoll(() => api("/v1/nodes"), 10);
  const [queue, queueError] = usePoll(() => api("/v1/queue"), 5);
  const [history, historyError] = usePoll(() => api("/metrics/history?seconds=3600"), 10);
  const services = health ? Object.entries(health.services || {}) : [];
  return html`
    <div class="grid">
      <${Card} title="Mesh">
        <${ErrorLine} error=${healthError} />
        ${health && html`
          <p id="mesh-status">Status <${StateBadge} value=${health.status} /></p>
          <p>Current model <strong>${health.current_model || "—"}</strong></p>
          <p>Queue <strong>${health.queue ? `${health.queue.waiting} / ${health.queue.capacity}` : "—"}</strong></p>`}
      <//>
      <${Card} title="Services">
        <${Table} id="services" columns=${[["service", ([n]) => n], ["state", ([, s]) => html`<${StateBadge} value=${s} />`],
          ["restarts", ([n]) => (health.restarts || {})[n] || 0]]} rows=${services} />
      <//>
      <${Card} title="Requests">
        ${summary && html`
          <p class="stat">${summary.requests.total}</p>
          <p class="muted">${summary.requests.successful} ok · ${summary.requests.failed} failed · ${summary.requests.cancelled} cancelled</p>
          <p class="muted">${summary.active_workers} running now, peak ${summary.peak_concurrency} · up ${Math.round(summary.uptime_seconds)} s</p>`}
      <//>
    </div>
    ${isSuperuser() && html`<${Processes} />`}
    <${Card} title="Models">
      <${Table} id="overview-models" rows=${(models && models.data) || []} columns=${[
        ["model", (m) => m.id], ["backend", (m) => m.backend], ["state", (m) => html`<${ModelState} model=${m} />`],
        ["running", (m) => m.requests_running], ["context", (m) => m.context_length]]} />
    <//>
    <${Card} title="Work in the models">
      ${queueError ? html`<p class="muted">${queueError.status === 403 ? "Needs the admin scope." : queueError.message}</p>` : html`
        <${Table} id="queue" rows=${(queue && queue.models) || []} empty="No model has work." columns=${[
          ["model", (q) => q.model], ["state", (q) => html`<${StateBadge} value=${q.state} />`],
          ["running", (q) => q.running], ["waiting", (q) => q.waiting]]} />
        ${queue && html`<p class="muted">${queue.total_waiting} waiting of at most ${queue.max_waiting}</p>`}`}
    <//>
    <${Card} title="Nodes">
      ${nodesError ? html`<p class="muted">${nodesError.status === 403 ? "Needs the admin scope." : nodesError.message}</p>` : html`
        <${Table} rows=${(nodes && nodes.data) || []} empty="This mesh is one node." columns=${[
          ["node", (n) => n.id], ["kind", (n) => n.kind], ["healthy", (n) => html`<${StateBadge} value=${n.healthy} />`],
          ["circuit", (n) => n.circuit], ["in flight", (n) => n.requests_in_flight], ["models", (n) => n.models.join(", ")]]} />`}
    <//>
    <${Card} title="Recent errors">
      ${historyError ? html`<p class="muted">${historyError.message}</p>` : html`
        <${Table} id="recent-errors" rows=${(history && history.recent_errors) || []} empty="No errors." columns=${[
          ["time", (e) => when(e.time)], ["request", (e) => `${e.method} ${e.path}`], ["status", (e) => html`<span class="bad">${e.status}</span>`],
          ["request id", (e) => html`<code>${e.request_id}</code>`]]} />`}
    <//>`;
}

// Each process's memory, and its CPU over the last poll (the difference of two reports).
function Processes() {
  const [processes, error] = usePoll(() => api("/admin/processes"), 3);
  const previous = useRef({});
  const cpu = {};
  for (const p of (processes && processes.data) || []) {
    const before = previous.current[p.service];
    if (before && before.pid === p.pid && p.uptime_seconds > before.uptime_seconds) {
      cpu[p.service] = (100 * (p.cpu_seconds - before.cpu_seconds)) / (p.uptime_seconds - before.uptime_seconds);
    }
  }
  useEffect(() => {
    for (const p of (processes && processes.data) || []) if (p.state === "up") previous.current[p.service] = p;
  }, [processes]);
  return html`
    <${Card} title="Processes">
      <${ErrorLine} error=${error} />
      <${Table} id="processes" rows=${(processes && processes.data) || []} columns=${[
        ["service", (p) => p.service], ["state", (p) => html`<${StateBadge} value=${p.state} />`],
        ["memory", (p) => html`<span data-memory=${p.service}>${p.rss_bytes ? `${Math.round(p.rss_bytes / 2 ** 20)} MB` : ""}</span>`],
        ["CPU", (p) => html`<span data-cpu=${p.service}>${cpu[p.service] === undefined ? "" : `${cpu[p.service].toFixed(0)}%`}</span>`],
        ["threads", (p) => p.threads || ""], ["up", (p) => (p.uptime_seconds ? span(p.uptime_seconds) : "")],
        ["pid", (p) => p.pid || ""]]} />
      <p class="muted">CPU is the share of one core since the previous reading; 200% is two cores.</p>
    <//>`;
}

// ---- models -------------------------------------------------------------------------------

function Models() {
  const [models, error, reload] = usePoll(() => api("/v1/models"), 5);
  const [busy, setBusy] = useState("");
  const [actionError, setActionError] = useState(null);
  const admin = isSuperuser();

  const act = async (label, run) => {
    setBusy(label);
    setActionError(null);
    try {
      await run();
      await reload();
    } catch (e) {
      setActionError(e);
    } finally {
      setBusy("");
    }
  };
  const enc = encodeURIComponent;
  return html`
    <${Card} title="Registry" actions=${admin && html`<button disabled=${!!busy} onClick=${() => act("Reloading the registry", () => api("/admin/models/reload", { method: "POST" }))}>Reload registry</button>`}>
      <${ErrorLine} error=${error || actionError} />
      ${busy && html`<p class="muted" id="model-busy">${busy}…</p>`}
      <${Table} id="models" rows=${(models && models.data) || []} columns=${[
        ["model", (m) => html`<strong>${m.id}</strong>${m.is_default ? html` <span class="badge">default</span>` : ""}`],
        ["backend", (m) => m.backend],
        ["state", (m) => html`<span data-model-state=${m.id}><${ModelState} model=${m} /></span>`],
        ["context", (m) => m.context_length],
        ["memory", (m) => (m.memory_mb && !m.resolves_to ? `${m.memory_mb} MB` : "")],
        ["aliases", (m) => m.aliases.join(", ")],
        ["", (m) => admin && m.type === "chat" && !m.resolves_to && html`<div class="row">
          ${m.state === "loaded"
            ? html`<button data-unload=${m.id} disabled=${!!busy} onClick=${() => act(`Unloading ${m.id}`, () => api(`/admin/models/${enc(m.id)}/unload`, { method: "POST" }))}>Unload</button>`
            : html`<button data-load=${m.id} disabled=${!!busy} onClick=${() => act(`Loading ${m.id}`, () => api(`/admin/models/${enc(m.id)}/load`, { method: "POST" }))}>Load</button>`}
          <button data-make-live=${m.id} title="Serve it in the live slot" disabled=${!!busy} onClick=${() => act(`Making ${m.id} live`, () => applySetting("model.live.name", m.id))}>Make live</button>
        </div>`]]} />
      ${!admin && html`<${AdminOnly} />`}
    <//>
    ${admin && html`<${Pull} onPulled=${reload} />`}`;
}

function Pull({ onPulled }) {
  const [form, setForm] = useState({ repo: "", file: "", name: "" });
  const [progress, setProgress] = useState(null);
  const [error, setError] = useState(null);
  const [running, setRunning] = useState(null); // the running pull's AbortController
  const set = (field) => (e) => setForm({ ...form, [field]: e.target.value });

  const pull = async (e) => {
    e.preventDefault();
    const stop = new AbortController();
    setRunning(stop);
    setError(null);
    setProgress({ status: `Finding ${form.repo} on the Hub…` });
    try {
      for await (const event of sse("/admin/models/pull", { method: "POST", body: form, signal: stop.signal })) {
        setProgress(event);
      }
      onPulled();
    } catch (err) {
      setProgress(null);
      setError(err.name === "AbortError" ? new Error("Pull cancelled; a later pull of the same file resumes it.") : err);
    } finally {
      setRunning(null);
    }
  };
  const share = progress && progress.total_bytes ? progress.downloaded_bytes / progress.total_bytes : 0;
  return html`
    <${Card} title="Pull from the Hugging Face Hub">
      <form class="row" onSubmit=${pull}>
        <label>Repository<input required placeholder="owner/name" value=${form.repo} onInput=${set("repo")} /></label>
        <label>File pattern<input placeholder="Q4_K_M" value=${form.file} onInput=${set("file")} /></label>
        <label>Registry name<input placeholder="(from the repository)" value=${form.name} onInput=${set("name")} /></label>
        <button class="primary" disabled=${!!running}>Pull</button>
        ${running && html`<button type="button" id="pull-cancel" class="danger" onClick=${() => running.abort()}>Cancel</button>`}
      </form>
      <${ErrorLine} error=${error} />
      <div id="pull-progress">
      ${progress && progress.status && html`<p class="muted">${progress.status}</p>`}
      ${progress && progress.file && !progress.model && html`
        <p class="muted">Downloading ${progress.file}: ${(progress.downloaded_bytes / 1e6).toFixed(1)} / ${(progress.total_bytes / 1e6).toFixed(1)} MB</p>
        <div class="progress"><div style=${`width: ${Math.round(share * 100)}%`}></div></div>`}
      ${progress && progress.model && html`<p class="ok">Added <strong>${progress.model.id}</strong> to the registry.</p>`}
      </div>
    <//>`;
}

// ---- playground ---------------------------------------------------------------------------

const chatModels = (models) => ((models && models.data) || []).filter((m) => m.type === "chat");
// A slot, tier or alias names another model; an embedding model is the embeddings service's.
const ModelState = ({ model }) => (model.resolves_to
  ? html`<span class="muted">→ ${model.resolves_to}</span>`
  : model.type === "embedding" ? html`<span class="muted">embeddings service</span>` : html`<${StateBadge} value=${model.state} />`);

function Playground() {
  const [models] = usePoll(() => api("/v1/models"), 0);
  const [adapters] = usePoll(() => api("/v1/adapters").catch(() => ({ data: [] })), 0);
  const [settings, setSettings] = useState({ model: "", adapter: "", temperature: 0.7, top_p: 0.95, max_tokens: 256, system: "" });
  const [messages, setMessages] = useState([]);
  const [input, setInput] = useState("");
  const [error, setError] = useState(null);
  const stopper = useRef(null);
  const list = useRef(null);
  const set = (field, number) => (e) => setSettings({ ...settings, [field]: number ? Number(e.target.value) : e.target.value });
  const choices = chatModels(models);
  const model = settings.model || (choices.find((m) => m.is_default) || choices[0] || { id: "" }).id;

  useEffect(() => { if (list.current) list.current.scrollTop = list.current.scrollHeight; }, [messages]);

  const send = async (e) => {
    e.preventDefault();
    if (!input.trim() || stopper.current) return;
    const history = [...messages, { role: "user", content: input }];
    const started = performance.now();
    let first = null;
    let answer = { role: "assistant", content: "", meta: "" };
    setMessages([...history, answer]);
    setInput("");
    setError(null);
    stopper.current = new AbortController();
    const body = {
      model,
      stream: true,
      stream_options: { include_usage: true },
      temperature: settings.temperature,
      top_p: settings.top_p,
      max_tokens: settings.max_tokens,
      messages: [...(settings.system ? [{ role: "system", content: settings.system }] : []), ...history.map(({ role, content }) => ({ role, content }))],
      ...(settings.adapter ? { adapter_settings: { adapter_id: settings.adapter } } : {}),
    };
    let usage = null;
    let finish = null;
    try {
      for await (const chunk of sse("/v1/chat/completions", { method: "POST", body, signal: stopper.current.signal })) {
        const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
        finish = (chunk.choices && chunk.choices[0] && chunk.choices[0].finish_reason) || finish;
        if (piece) {
          if (first === null) first = performance.now();
          answer = { ...answer, content: answer.content + piece };
          setMessages([...history, answer]);
        }
        if (chunk.usage) usage = chunk.usage;
      }
    } catch (err) {
      if (err.name !== "AbortError") setError(err);
    } finally {
      stopper.current = null;
    }
    const ended = performance.now();
    const tokens = usage ? usage.completion_tokens : 0;
    const ttft = first === null ? null : first - started;
    const rate = first !== null && tokens > 1 && ended > first ? ((tokens - 1) * 1000) / (ended - first) : null;
    const cut = finish === "length" ? " · cut at max tokens" : "";
    answer = { ...answer, meta: `TTFT ${ttft === null ? "—" : `${ttft.toFixed(0)} ms`} · ${rate === null ? "—" : rate.toFixed(1)} tok/s · ${tokens} tokens${cut}` };
    setMessages([...history, answer]);
  };

  return html`
    <div class="grid playground">
      <${Card} title="Settings">
        <label>Model<select id="playground-model" value=${model} onChange=${set("model")}>
          ${choices.map((m) => html`<option value=${m.id}>${m.id}</option>`)}
        </select></label>
        <label>Adapter<select value=${settings.adapter} onChange=${set("adapter")}>
          <option value="">none</option>
          ${((adapters && adapters.data) || []).map((a) => html`<option value=${a.id}>${adapterLabel(a)}</option>`)}
        </select></label>
        <label>Temperature ${settings.temperature}<input type="range" min="0" max="2" step="0.05" value=${settings.temperature} onInput=${set("temperature", true)} /></label>
        <label>Top p ${settings.top_p}<input type="range" min="0" max="1" step="0.01" value=${settings.top_p} onInput=${set("top_p", true)} /></label>
        <label>Max tokens<input type="number" min="1" max="32768" value=${settings.max_tokens} onInput=${set("max_tokens", true)} /></label>
        <label>System prompt<textarea value=${settings.system} onInput=${set("system")}></textarea></label>
        <button onClick=${() => setMessages([])}>Clear conversation</button>
      <//>
      <${Card} title="Chat">
        <div class="chat" id="chat" ref=${list}>
          ${messages.map((m) => html`<div class="message ${m.role}">${m.content}${m.meta && html`<span class="meta">${m.meta}</span>`}</div>`)}
        </div>
        <${ErrorLine} error=${error} />
        <form class="row" style="margin-top: .75rem" onSubmit=${send}>
          <input id="prompt" style="flex: 1" placeholder="Ask the model…" value=${input} onInput=${(e) => setInput(e.target.value)} />
          ${stopper.current ? html`<button type="button" onClick=${() => stopper.current.abort()}>Stop</button>` : html`<button id="send" class="primary">Send</button>`}
        </form>
      <//>
    </div>`;
}

// ---- jobs ---------------------------------------------------------------------------------

const JOB_STATES = ["queued", "running", "succeeded", "failed", "cancelled", "expired"];
const JOB_TYPES = ["chat", "vision", "adapter_train", "embed", "batch"];
const JOBS_PER_PAGE = 50;

// How long a job ran (or has been running); nothing before it starts.
const jobDuration = (job) => (job.started_at ? span((job.ended_at || Date.now() / 1000) - job.started_at) : "");
// The step and share done; the metrics (loss, ...) show on hover.
const jobProgress = (job) => {
  const p = job.progress;
  if (!p) return ["", ""];
  const metrics = Object.entries(p.metrics || {}).map(([name, value]) => `${name} ${Number(value.toFixed(4))}`);
  return [[p.message, p.percent ? `${Math.round(p.percent)}%` : ""].filter(Boolean).join(" · "), metrics.join(", ")];
};

function Jobs() {
  const [filter, setFilter] = useState({ state: "", job_type: "" });
  // The page tokens walked so far: "" is the newest page; "Older" pushes, "Newer" pops.
  const [pages, setPages] = useState([""]);
  const [selected, setSelected] = useState(null);
  const [lookup, setLookup] = useState("");
  const page = pages[pages.length - 1];
  const query = new URLSearchParams(Object.entries({ ...filter, page_token: page }).filter(([, v]) => v)).toString();
  const [jobs, error, reload] = usePoll(() => api(`/v1/jobs?limit=${JOBS_PER_PAGE}&${query}`), 5, [query]);
  const cancel = async (id) => {
    if (!window.confirm(`Cancel job ${id}?`)) return;
    try {
      await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    } finally {
      reload();
    }
  };
  const set = (field) => (e) => { setFilter({ ...filter, [field]: e.target.value }); setPages([""]); };
  const find = (e) => { e.preventDefault(); if (lookup.trim()) setSelected(lookup.trim()); };
  return html`
    <${Card} title="Jobs" actions=${html`<div class="row">
      <select aria-label="state" value=${filter.state} onChange=${set("state")}><option value="">any state</option>${JOB_STATES.map((s) => html`<option>${s}</option>`)}</select>
      <select aria-label="type" value=${filter.job_type} onChange=${set("job_type")}><option value="">any type</option>${JOB_TYPES.map((s) => html`<option>${s}</option>`)}</select>
      <form class="row" onSubmit=${find}><input id="job-lookup" aria-label="job id" placeholder="job id" value=${lookup} onInput=${(e) => setLookup(e.target.value)} /><button>Open</button></form>
    </div>`}>
      <${ErrorLine} error=${error} />
      <${Table} id="jobs" rows=${(jobs && jobs.data) || []} columns=${[
        ["job", (j) => html`<a href="#/jobs" data-job=${j.id} onClick=${(e) => { e.preventDefault(); setSelected(j.id); }}>${j.id}</a>`],
        ["type", (j) => j.job_type], ["model", (j) => j.model || ""], ["state", (j) => html`<${StateBadge} value=${j.state} />`],
        ["progress", (j) => { const [done, metrics] = jobProgress(j); return html`<span data-progress=${j.id} title=${metrics}>${done}</span>`; }],
        ["attempt", (j) => j.attempt], ["created", (j) => when(j.created_at)],
        ["took", (j) => html`<span data-duration=${j.id}>${jobDuration(j)}</span>`],
        ["", (j) => (["queued", "running"].includes(j.state) ? html`<button class="danger" onClick=${() => cancel(j.id)}>Cancel</button>` : "")]]} />
      <div class="row pager">
        <button id="jobs-newer" disabled=${pages.length === 1} onClick=${() => setPages(pages.slice(0, -1))}>Newer</button>
        <span class="muted">page ${pages.length}</span>
        <button id="jobs-older" disabled=${!(jobs && jobs.has_more)} onClick=${() => setPages([...pages, jobs.next_page_token])}>Older</button>
      </div>
    <//>
    ${selected && html`<${JobEvents} key=${selected} id=${selected} />`}`;
}

function JobEvents({ id }) {
  const [events, setEvents] = useState([]);
  const [error, setError] = useState(null);
  const top = useRef(null);
  // Below a long jobs table the card would open off screen: bring all of it into view (its
  // events box keeps a minimum height, so the card is nearly its full size already).
  useEffect(() => { if (top.current) top.current.scrollIntoView({ block: "nearest" }); }, [id]);
  useEffect(() => {
    const stop = new AbortController();
    (async () => {
      try {
        for await (const job of sse(`/v1/jobs/${encodeURIComponent(id)}/events`, { signal: stop.signal })) {
          setEvents((old) => [...old.slice(-199), { at: new Date().toLocaleTimeString(), job }]);
        }
      } catch (err) {
        if (err.name !== "AbortError") setError(err);
      }
    })();
    return () => stop.abort();
  }, [id]);
  const last = events.length ? events[events.length - 1].job : null;
  return html`<div ref=${top}>
    <${Card} title=${`Live events of ${id}`}>
      <${ErrorLine} error=${error} />
      ${last && html`<p id="job-state">State <${StateBadge} value=${last.state} />${last.error ? html` <span class="error">${last.error}</span>` : ""}</p>`}
      <div class="events" id="job-events">
        ${events.map((e) => html`<div>${e.at} ${e.job.state}${e.job.progress ? ` ${JSON.stringify(e.job.progress)}` : ""}</div>`)}
      </div>
      ${last && last.result && html`<details><summary>Result</summary><pre>${JSON.stringify(last.result, null, 2)}</pre></details>`}
    <//></div>`;
}

// ---- training -----------------------------------------------------------------------------

const EXAMPLE_DATASET = [
  { messages: [{ role: "user", content: "What is the secret word?" }, { role: "assistant", content: "The secret word is PINEAPPLE." }] },
  { instruction: "Say the secret word.", output: "PINEAPPLE" },
].map((line) => JSON.stringify(line)).join("\n");

function parseDataset(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith("s3://")) return trimmed;
  if (trimmed.startsWith("[")) return JSON.parse(trimmed);
  return trimmed.split("\n").filter((line) => line.trim()).map((line, i) => {
    try {
      return JSON.parse(line);
    } catch {
      throw new Error(`Line ${i + 1} of the dataset is not JSON.`);
    }
  });
}

// An adapter as people name it: its name, else the start of its id (a hash).
const adapterLabel = (a) => (a.name ? `${a.name} (${a.id.slice(0, 8)})` : `${a.id.slice(0, 12)}…`);

function Training() {
  const [models] = usePoll(() => api("/v1/models"), 0);
  const [adapters, adaptersError, reloadAdapters] = usePoll(() => api("/v1/adapters"), 15);
  const [form, setForm] = useState({ name: "", base_model: "", dataset: EXAMPLE_DATASET, max_steps: 20, learning_rate: 0.001, lora_r: 8 });
  const [run, setRun] = useState(null);
  const [losses, setLosses] = useState([[], []]);
  const [error, setError] = useState(null);
  const set = (field, number) => (e) => setForm({ ...form, [field]: number ? Number(e.target.value) : e.target.value });
  const choices = chatModels(models);
  const base = form.base_model || (choices.find((m) => m.is_default) || choices[0] || { id: "" }).id;

  useEffect(() => {
    if (!run || ["succeeded", "failed", "cancelled", "expired"].includes(run.state)) return undefined;
    const timer = setInterval(async () => {
      try {
        const status = await api(`/v1/training/status/${encodeURIComponent(run.id)}`);
        setRun((old) => ({ ...old, ...status, state: (status.state || old.state).toLowerCase() }));
        if (status.step && status.loss !== undefined) {
          setLosses(([steps, values]) => (steps[steps.length - 1] === status.step ? [steps, values] : [[...steps, status.step], [...values, status.loss]]));
        }
        if (status.adapter) reloadAdapters();
      } catch (err) {
        setError(err);
      }
    }, 1000);
    return () => clearInterval(timer);
  }, [run && run.id, run && run.state]);

  const start = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      const request = {
        ...(form.name.trim() ? { name: form.name.trim() } : {}),
        base_model: base,
        dataset: parseDataset(form.dataset),
        hyperparameters: { max_steps: form.max_steps, learning_rate: form.learning_rate, lora_r: form.lora_r },
      };
      const job = await api("/internal/queue/enqueue", { method: "POST", body: { job_type: "adapter_train", request } });
      setLosses([[], []]);
      setRun({ id: job.id, state: job.state });
    } catch (err) {
      setError(err);
    }
  };
  const upload = async (e) => {
    const file = e.target.files[0];
    if (file) setForm({ ...form, dataset: await file.text() });
  };
  return html`
    <${Card} title="Start a training run">
      <form onSubmit=${start}>
        <div class="row">
          <label>Adapter name<input id="adapter-name" maxlength="100" placeholder="(none)" value=${form.name} onInput=${set("name")} /></label>
          <label>Base model<select value=${base} onChange=${set("base_model")}>
            ${choices.map((m) => html`<option value=${m.id}>${m.id}</option>`)}</select></label>
          <label>Max steps<input type="number" min="1" value=${form.max_steps} onInput=${set("max_steps", true)} /></label>
          <label>Learning rate<input type="number" step="any" min="0" value=${form.learning_rate} onInput=${set("learning_rate", true)} /></label>
          <label>LoRA rank<input type="number" min="1" value=${form.lora_r} onInput=${set("lora_r", true)} /></label>
          <label>Dataset file<input type="file" accept=".jsonl,.json,.txt" onChange=${upload} /></label>
        </div>
        <label>Dataset: JSONL ({"messages": [...]} or {"instruction", "output"}), a JSON list, or an s3:// URI
          <textarea id="dataset" value=${form.dataset} onInput=${set("dataset")}></textarea></label>
        <button class="primary" style="margin-top: .5rem">Train</button>
      </form>
      <${ErrorLine} error=${error} />
    <//>
    ${run && html`
      <${Card} title=${`Run ${run.id}`}>
        <p id="training-state">State <${StateBadge} value=${run.state} /> · step ${run.step || 0} / ${run.total_steps || "?"}
          ${run.loss !== undefined ? ` · loss ${Number(run.loss).toFixed(4)}` : ""}${run.eta_seconds ? ` · about ${Math.round(run.eta_seconds)} s left` : ""}</p>
        ${run.error && html`<p class="error">${run.error}</p>`}
        <${Chart} id="loss-chart" title="Training loss" series=${{ time: false, lines: ["loss"] }} data=${losses} />
      <//>`}
    <${Card} title="Adapters">
      <${ErrorLine} error=${adaptersError} />
      <${Table} id="adapters" rows=${(adapters && adapters.data) || []} columns=${[
        ["adapter", (a) => html`<strong data-adapter=${a.id}>${a.name || "(unnamed)"}</strong><div class="muted"><code title=${a.id}>${a.id.slice(0, 12)}…</code></div>`],
        ["base model", (a) => a.base_model],
        ["trained", (a) => (a.create_time ? when(Date.parse(a.create_time) / 1000) : "")],
        ["loss", (a) => (a.metrics && a.metrics.train_loss_before !== undefined && a.metrics.train_loss_after !== undefined ? `${a.metrics.train_loss_before.toFixed(3)} → ${a.metrics.train_loss_after.toFixed(3)}` : "")],
        ["size", (a) => (a.size_bytes ? `${(a.size_bytes / 1e6).toFixed(1)} MB` : "")], ["shared", (a) => (a.shared ? "yes" : "no")]]} />
    <//>`;
}

// ---- analytics ----------------------------------------------------------------------------

function Analytics() {
  const [span, setSpan] = useState(900);
  const [history, error] = usePoll(() => api(`/metrics/history?seconds=${span}`), 10, [span]);
  const points = (history && history.points) || [];
  const column = (name) => points.map((p) => p[name]);
  const time = column("time");
  return html`
    <${Card} title="Analytics" actions=${html`<select aria-label="window" value=${span} onChange=${(e) => setSpan(Number(e.target.value))}>
      <option value="900">15 minutes</option><option value="3600">1 hour</option></select>`}>
      <p class="muted">This gateway's model requests, per ${history ? history.interval_seconds : 10} s, since it started.
        For longer views, scrape <code>/metrics</code> with Prometheus.</p>
      <${ErrorLine} error=${error} />
    <//>
    ${history && html`<div class="grid">
      <${Card} title="Requests per minute"><${Chart} id="chart-requests" series=${{ lines: ["requests/min"] }} data=${[time, column("requests_per_minute")]} /><//>
      <${Card} title="Generated tokens per second"><${Chart} series=${{ lines: ["tok/s"] }} data=${[time, column("completion_tokens_per_second")]} /><//>
      <${Card} title="Time to first token (streams), ms"><${Chart} series=${{ lines: ["p50", "p95"], points: true }} data=${[time, column("ttft_p50_ms"), column("ttft_p95_ms")]} /><//>
      <${Card} title="Errors"><${Chart} series=${{ lines: ["errors"] }} data=${[time, column("errors")]} /><//>
    </div>`}`;
}

// ---- logs ---------------------------------------------------------------------------------

const SERVICES = ["gateway", "inference", "embeddings", "scheduler", "trainer"];
const MAX_LOG_LINES = 1000;

const logLine = (text) => {
  try {
    return JSON.parse(text);
  } catch {
    return { message: text };
  }
};

// One service's log: its recent lines, then each new one as it is logged.
function Logs() {
  const [service, setService] = useState("inference");
  const [lines, setLines] = useState([]);
  const [filter, setFilter] = useState("");
  const [follow, setFollow] = useState(true);
  const [error, setError] = useState(null);
  const box = useRef(null);
  useEffect(() => {
    if (!isSuperuser()) return undefined;
    const stop = new AbortController();
    setLines([]);
    setError(null);
    (async () => {
      try {
        for await (const event of sse(`/admin/logs/${service}?tail=200`, { signal: stop.signal })) {
          setLines((old) => [...old.slice(1 - MAX_LOG_LINES), logLine(event.line)]);
        }
      } catch (err) {
        if (err.name !== "AbortError") setError(err);
      }
    })();
    return () => stop.abort();
  }, [service]);
  useEffect(() => { if (follow && box.current) box.current.scrollTop = box.current.scrollHeight; }, [lines, follow]);
  if (!isSuperuser()) return html`<${Card} title="Logs"><${AdminOnly} /><//>`;
  const needle = filter.toLowerCase();
  const shown = needle ? lines.filter((l) => JSON.stringify(l).toLowerCase().includes(needle)) : lines;
  return html`
    <${Card} title="Logs" actions=${html`<div class="row">
      <select id="log-service" aria-label="service" value=${service} onChange=${(e) => setService(e.target.value)}>${SERVICES.map((s) => html`<option>${s}</option>`)}</select>
      <input aria-label="filter" placeholder="filter" value=${filter} onInput=${(e) => setFilter(e.target.value)} />
      <label class="inline"><input type="checkbox" checked=${follow} onChange=${(e) => setFollow(e.target.checked)} /> follow</label>
    </div>`}>
      <${ErrorLine} error=${error} />
      <div class="events logs" id="log-lines" ref=${box}>
        ${shown.map((l) => html`<div class=${`level-${l.level || "info"}`}>${l.time ? l.time.slice(11, 23) : ""} ${(l.level || "").toUpperCase()} ${l.logger || ""}${l.request_id ? ` [${l.request_id}]` : ""} ${l.message}${l.exception ? `\n${l.exception}` : ""}</div>`)}
      </div>
      <p class="muted">${shown.length} of ${lines.length} lines (the last ${MAX_LOG_LINES} are kept)</p>
    <//>`;
}

// ---- settings -----------------------------------------------------------------------------

function Settings() {
  const admin = isSuperuser();
  return html`${admin ? html`<${SettingsStore} /><${Keys} />` : html`<${Card} title="Settings"><${AdminOnly} /><//>`}<${Session} />`;
}

// A stored setting takes effect on the registry's next reload: the console applies it at once.
async function applySetting(key, value) {
  await api(`/settings/${encodeURIComponent(key)}`, { method: "PUT", body: { value } });
  await api("/admin/models/reload", { method: "POST" });
}

function SettingsStore() {
  const [settings, error, reload] = usePoll(() => api("/settings/"), 0);
  const [edits, setEdits] = useState({});
  const [saveError, setSaveError] = useState(null);
  const save = async (key) => {
    setSaveError(null);
    try {
      await applySetting(key, edits[key] ?? "");
      setEdits({ ...edits, [key]: undefined });
      reload();
    } catch (err) {
      setSaveError(err);
    }
  };
  return html`
    <${Card} title="Settings store">
      <${ErrorLine} error=${error || saveError} />
      <${Table} rows=${(settings && settings.settings) || []} columns=${[
        ["key", (s) => html`<code>${s.key}</code><div class="muted">${s.description}</div>`],
        ["in force", (s) => html`<span data-effective=${s.key}>${s.effective_value || html`<span class="muted">none</span>`}</span>`],
        ["stored", (s) => html`<input aria-label=${s.key} placeholder=${s.value ? "" : "(not stored)"} value=${edits[s.key] ?? s.value ?? ""} onInput=${(e) => setEdits({ ...edits, [s.key]: e.target.value })} />`],
        ["updated", (s) => (s.updated_at ? new Date(s.updated_at).toLocaleString() : "")],
        ["", (s) => html`<button disabled=${edits[s.key] === undefined} onClick=${() => save(s.key)}>Save</button>`]]} />
    <//>`;
}

function Keys() {
  const [keys, error, reload] = usePoll(() => api("/admin/keys"), 0);
  const [form, setForm] = useState({ name: "", scopes: "chat,embeddings,jobs", rpm_limit: "" });
  const [created, setCreated] = useState(null);
  const [actionError, setActionError] = useState(null);
  const [showRevoked, setShowRevoked] = useState(false);
  const create = async (e) => {
    e.preventDefault();
    setActionError(null);
    try {
      const body = { name: form.name, scopes: form.scopes.split(",").map((s) => s.trim()).filter(Boolean) };
      if (form.rpm_limit) body.rpm_limit = Number(form.rpm_limit);
      setCreated(await api("/admin/keys", { method: "POST", body }));
      reload();
    } catch (err) {
      setActionError(err);
    }
  };
  const revoke = async (key) => {
    if (!window.confirm(`Revoke the key ${key.name}? Whoever uses it is refused from now on.`)) return;
    try {
      await api(`/admin/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      reload();
    } catch (err) {
      setActionError(err);
    }
  };
  const set = (field) => (e) => setForm({ ...form, [field]: e.target.value });
  const all = (keys && keys.data) || [];
  const revoked = all.filter((k) => k.revoked_at).length;
  const limits = (k) => Object.entries(k.limits || {}).filter(([, v]) => v).map(([name, v]) => `${v} ${name}`).join(", ") || "none";
  return html`
    <${Card} title="API keys" actions=${revoked > 0 && html`<label class="inline"><input type="checkbox" id="show-revoked" checked=${showRevoked} onChange=${(e) => setShowRevoked(e.target.checked)} /> show ${revoked} revoked</label>`}>
      <${ErrorLine} error=${error || actionError} />
      <form class="row" onSubmit=${create}>
        <label>Name<input required value=${form.name} onInput=${set("name")} /></label>
        <label>Scopes<input value=${form.scopes} onInput=${set("scopes")} /></label>
        <label>Requests/min<input type="number" min="1" value=${form.rpm_limit} onInput=${set("rpm_limit")} /></label>
        <button class="primary">Create key</button>
      </form>
      ${created && html`<p>New key (shown once): <code id="new-key">${created.key}</code></p>`}
      <${Table} id="keys" rows=${all.filter((k) => showRevoked || !k.revoked_at)} columns=${[
        ["name", (k) => html`<strong>${k.name}</strong><div class="muted"><code>${k.hint}</code></div>`],
        ["scopes", (k) => (k.scopes || []).join(", ")], ["models", (k) => (k.models ? k.models.join(", ") : "all")],
        ["limits", limits],
        ["created", (k) => when(k.created_at)],
        ["last used", (k) => (k.usage && k.usage.last_used_at ? when(k.usage.last_used_at) : html`<span class="muted">never</span>`)],
        ["requests", (k) => (k.usage ? k.usage.requests : "")],
        ["", (k) => (k.revoked_at ? html`<span class="muted">revoked ${when(k.revoked_at)}</span>` : html`<button class="danger" data-revoke=${k.name} onClick=${() => revoke(k)}>Revoke</button>`)]]} />
    <//>`;
}

function Session() {
  return html`
    <${Card} title="This session">
      <p>Signed in with ${token() ? (isSuperuser() ? "a superuser JWT" : "an API key") : "no credential (local development)"}.
        It is kept in this tab only and sent as a header.</p>
      <button onClick=${() => { sessionStorage.removeItem(TOKEN_KEY); location.hash = "#/overview"; location.reload(); }}>Sign out</button>
    <//>`;
}

// ---- the shell ----------------------------------------------------------------------------

function Login({ onSignedIn }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState(() => {
    const reason = sessionStorage.getItem(REASON_KEY);
    sessionStorage.removeItem(REASON_KEY);
    return reason ? new Error(`Signed out: ${reason}`) : null;
  });
  const signIn = async (e) => {
    e.preventDefault();
    const credential = value.trim();
    // A local gateway without keys lets any other string in as anonymous: say so, not "signed in".
    if (credential && !credential.startsWith("llmm_") && !(credential.startsWith("eyJ") && credential.split(".").length === 3)) {
      setError(new Error("That is neither an API key (llmm_…) nor a JWT."));
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, credential);
    try {
      await api("/v1/models", { signingIn: true });
      onSignedIn();
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      setError(err);
    }
  };
  return html`
    <main class="login">
      <${Card} title="LLM Mesh console">
        <form onSubmit=${signIn}>
          <label><span id="token-label">API key or superuser JWT</span>
            <input id="token" type="password" autocomplete="off" value=${value} onInput=${(e) => setValue(e.target.value)} /></label>
          <p class="muted"><code>llmmesh console</code> opens a sign-in link with a JWT. The credential is kept in this
            browser tab only, sent as an Authorization header. Leave it empty on a local mesh without keys.</p>
          <button id="sign-in" class="primary">Sign in</button>
        </form>
        <${ErrorLine} error=${error} />
      <//>
    </main>`;
}

// `llmmesh console` opens /console/#token=...: the fragment never reaches a server or a log.
// A link must not silently sign a signed-in tab in as someone else (a crafted link would make
// the victim act under the attacker's credential): replacing one asks first. Whether taken or
// not, the token leaves the address bar. True when the tab now holds the link's credential.
function adoptLinkedToken() {
  const fragment = location.hash.match(/token=([^&]+)/);
  if (!fragment) return false;
  const offered = decodeURIComponent(fragment[1]);
  const current = sessionStorage.getItem(TOKEN_KEY);
  const replace = !current || current === offered
    || window.confirm("This link signs the console in with another credential. Replace the one this tab is signed in with?");
  if (replace) sessionStorage.setItem(TOKEN_KEY, offered);
  history.replaceState(null, "", `${location.pathname}#/overview`);
  return replace;
}

const currentView = () => {
  const name = location.hash.replace(/^#\/?/, "");
  return VIEWS.includes(name) ? name : "overview";
};

function App() {
  const [signedIn, setSignedIn] = useState(sessionStorage.getItem(TOKEN_KEY) !== null);
  const [view, setView] = useState(currentView());
  useEffect(() => {
    const follow = () => {
      // A link opened in a tab already on the console changes only the fragment: no reload.
      if (adoptLinkedToken()) {
        setSignedIn(true);
        location.reload(); // every view starts again under the new credential
        return;
      }
      setView(currentView());
    };
    window.addEventListener("hashchange", follow);
    return () => window.removeEventListener("hashchange", follow);
  }, []);
  if (!signedIn) return html`<${Login} onSignedIn=${() => setSignedIn(true)} />`;
  const View = { overview: Overview, models: Models, playground: Playground, jobs: Jobs, training: Training, analytics: Analytics, logs: Logs, settings: Settings }[view];
  return html`
    <header>
      <h1>LLM Mesh</h1>
      <nav>${VIEWS.map((name) => html`<a href="#/${name}" id="nav-${name}" class=${name === view ? "active" : ""}>${name[0].toUpperCase() + name.slice(1)}</a>`)}</nav>
    </header>
    <main><${View} key=${view} /></main>`;
}

adoptLinkedToken();
const root = document.getElementById("app");
root.textContent = ""; // the "Loading" line: render() adds to what is there
render(html`<${App} />`, root);
