// The console's one way to the gateway: the public /v1 routes with the signed-in bearer token.

export class ApiError extends Error {
  // `problem` is the RFC 9457 body: title, status, detail, path (the field that was wrong),
  // problems (template errors, each with its own path).
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.path = problem.path || "";
    this.problems = problem.problems || [];
  }
}

export class Api {
  constructor(token, onUnauthorized = () => {}) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, ...extra };
  }

  // The answer's JSON (null for an empty body); an ApiError for any status >= 400.
  async request(method, path, { body, headers = {}, signal } = {}) {
    const init = { method, headers: this.headers({ Accept: "application/json", ...headers }), signal };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    if (!response.ok) throw await this.error(response);
    const text = await response.text();
    const value = text ? JSON.parse(text) : null;
    return { value, headers: response.headers, status: response.status };
  }

  async get(path, options) {
    return (await this.request("GET", path, options)).value;
  }

  async post(path, body, options = {}) {
    return (await this.request("POST", path, { ...options, body })).value;
  }

  async text(path, { signal } = {}) {
    const response = await fetch(path, { headers: this.headers({ Accept: "text/plain" }), signal });
    if (!response.ok) throw await this.error(response);
    return response.text();
  }

  async error(response) {
    if (response.status === 401) this.onUnauthorized();
    let problem;
    try {
      problem = await response.json();
    } catch {
      problem = { title: response.statusText, status: response.status };
    }
    return new ApiError(response.status, problem);
  }

  // Server-sent events read with fetch (EventSource cannot send the Authorization header).
  // Calls onEvent({event, data, id}) for each message; resumes with Last-Event-ID when the
  // connection drops, until the server ends the stream or `signal` aborts. Resolves when done.
  async stream(path, onEvent, { signal, retryMs = 1000 } = {}) {
    let lastId = "";
    while (!signal?.aborted) {
      let response;
      try {
        const headers = this.headers({ Accept: "text/event-stream" });
        if (lastId) headers["Last-Event-ID"] = lastId;
        response = await fetch(path, { headers, signal });
      } catch (error) {
        if (signal?.aborted) return;
        await sleep(retryMs, signal);
        continue;
      }
      if (!response.ok) {
        if (response.status === 429) {
          await sleep(Number(response.headers.get("Retry-After") || 2) * 1000, signal);
          continue;
        }
        throw await this.error(response);
      }
      const ended = await readEvents(response.body, (message) => {
        if (message.id) lastId = message.id;
        onEvent(message);
      }, signal);
      if (ended) return;
      await sleep(retryMs, signal);
    }
  }
}

// True when the server closed the stream itself (it ends a run's stream after its last event).
async function readEvents(body, onMessage, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = { event: "", data: [], id: "" };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return true;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (message.data.length || message.event) {
            onMessage({ event: message.event || "message", data: message.data.join("\n"), id: message.id });
          } else if (message.id) {
            onMessage({ event: "", data: "", id: message.id });
          }
          message = { event: "", data: [], id: "" };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") message.data.push(text);
          else if (field === "event") message.event = text;
          else if (field === "id") message.id = text;
        }
      }
    }
  } catch (error) {
    if (signal?.aborted) return true;
    return false; // dropped: resume
  } finally {
    reader.releaseLock?.();
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
