// The launch form (#/catalog/NAME/VERSION): a form made from the published EnvironmentTemplate
// version (GET /v1/environment-templates/NAME/VERSION), one field per variable. Submitting it
// creates the environment (PUT /v1/environments/ENV), starts its deploy (POST .../runs) and opens
// the run. The API checks every value: its problems are shown beside the fields they name
// (`name`, `variables.X`) and in a summary above the form. Viewers see that they may not launch.

import { ApiError } from "../api.js";
import { h, replace } from "../dom.js";

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const MASK = "********"; // sent back for a sensitive variable, it keeps the value stored before
const enc = encodeURIComponent;

export async function render(ctx, name, version) {
  ctx.title(`Launch ${name} ${version}`);
  const aborter = new AbortController();
  const dispose = () => aborter.abort();
  const template = await ctx.api.get(`/v1/environment-templates/${enc(name)}/${enc(version)}`,
    { signal: aborter.signal });
  const header = [
    h("nav.breadcrumb", { "aria-label": "Breadcrumb" },
      h("a", { href: "#/catalog" }, "Catalog"), " / ", `${template.name} ${template.version}`),
    h("h1", { id: "launch-title" }, `Launch ${template.name} ${template.version}`),
    template.description ? h("p.launch-description", {}, template.description) : null,
  ];
  if (!ctx.can("operator")) {
    return {
      el: h("section.launch", { "aria-labelledby": "launch-title" }, header,
        h("p.notice", {}, `Your role (${ctx.me.role}) may not launch environments: an operator or an admin can. `,
          h("a", { href: "#/catalog" }, "Back to the catalog"))),
      dispose,
    };
  }
  const form = launchForm(ctx, template, aborter.signal);
  return { el: h("section.launch", { "aria-labelledby": "launch-title" }, header, form), dispose };
}

// One labelled control with its hint and the slot its API error goes into.
function field(id, label, control, { hint = "", required = false } = {}) {
  const hintEl = hint ? h("p.hint", { id: `${id}-hint` }, hint) : null;
  const error = h("p.field-error", { id: `${id}-error` });
  control.id = id;
  control.setAttribute("aria-describedby", [hintEl ? `${id}-hint` : "", `${id}-error`].filter(Boolean).join(" "));
  const el = h("div.field", {},
    h("label", { for: id }, label, required ? h("span.required-mark", { "aria-hidden": "true" }, " *") : null),
    control, hintEl, error);
  return { el, control, error };
}

function variableControl(variable) {
  const text = variable.default ?? "";
  if (variable.override === "notallowed") {
    return h("input.readonly", {
      type: "text", readonly: true, value: variable.sensitive ? "" : text,
      placeholder: variable.sensitive ? "(sensitive, not shown)" : "",
    });
  }
  if (variable.override === "restricted" && variable.multi_select) {
    const chosen = new Set(chosenList(variable.default));
    return h("select", { multiple: true, required: variable.required, size: Math.min(6, variable.restricted_values.length) },
      variable.restricted_values.map((value) => h("option", { value, selected: chosen.has(value) }, value)));
  }
  if (variable.override === "restricted") {
    const options = variable.restricted_values.map((value) =>
      h("option", { value, selected: !variable.sensitive && value === variable.default }, value));
    const unchosen = variable.sensitive || variable.default === null;
    const placeholder = unchosen ? h("option", { value: "" }, "Choose…") : null;
    return h("select", { required: variable.required }, placeholder, options);
  }
  if (variable.sensitive) {
    return h("input", { type: "password", autocomplete: "off", required: variable.required, value: "" });
  }
  if (variable.value_type === "json" || variable.value_type === "hcl") {
    return h("textarea", { rows: 4, spellcheck: false, required: variable.required, value: text });
  }
  return h("input", {
    type: "text", spellcheck: false, autocomplete: "off", required: variable.required, value: text,
  });
}

// A multiSelect variable's values: the template gives a JSON array (or one value).
function chosenList(text) {
  if (text === null || text === undefined || text === "") return [];
  try {
    const parsed = JSON.parse(text);
    return Array.isArray(parsed) ? parsed.map(String) : [String(parsed)];
  } catch {
    return [text];
  }
}

// What a control holds, as the API takes it (several chosen: a JSON array).
function controlValue(variable, control) {
  if (!variable.multi_select) return control.value;
  const chosen = [...control.selectedOptions].map((option) => option.value);
  return chosen.length ? JSON.stringify(chosen) : "";
}

function variableHint(variable) {
  const parts = [];
  if (variable.description) parts.push(variable.description);
  if (variable.value_type === "json") parts.push("A JSON value.");
  if (variable.value_type === "hcl") parts.push("An HCL value.");
  if (variable.multi_select) parts.push("Choose one or more.");
  if (variable.override === "notallowed") parts.push("Set by the template: it cannot be changed.");
  else if (variable.sensitive) {
    parts.push(variable.has_default
      ? "Sensitive: leave it empty to keep the template's value (not shown)."
      : "Sensitive: stored sealed and never shown again.");
  } else if (variable.override !== "restricted" && variable.default !== null) {
    parts.push("Leave it as it is to use the template's value.");
  }
  return parts.join(" ");
}

function launchForm(ctx, template, signal) {
  const summaryList = h("ul");
  const summary = h("div.error-summary", {
    tabindex: "-1", role: "alert", "aria-labelledby": "launch-errors-title", hidden: true,
  }, h("h2", { id: "launch-errors-title" }, "The environment was not launched"), summaryList);
  const status = h("p.launch-status", { role: "status" });
  const submit = h("button.primary", { type: "submit" }, "Launch");

  const nameField = field("env-name",
    "Environment name",
    h("input", { type: "text", name: "name", required: true, maxLength: 63, autocomplete: "off", spellcheck: false }),
    { hint: "Lowercase letters, digits and '-', at most 63 characters.", required: true });
  const fields = new Map([["name", nameField]]); // API path -> field
  const variableFields = template.variables.map((variable) => {
    const editable = variable.override !== "notallowed";
    const built = field(`var-${variable.name}`, variable.name, variableControl(variable),
      { hint: variableHint(variable), required: editable && variable.required });
    fields.set(`variables.${variable.name}`, built);
    return { variable, editable, ...built };
  });

  const form = h("form.launch-form.card", { novalidate: true, "aria-labelledby": "launch-title" },
    summary,
    h("fieldset", {}, h("legend", {}, "Environment"), nameField.el),
    h("fieldset", {}, h("legend", {}, "Variables"),
      variableFields.length
        ? [h("p.hint", {}, "Fields marked * are required."), variableFields.map((f) => f.el)]
        : h("p.muted", {}, "This template declares no variables.")),
    h("div.actions", {}, submit, h("a", { href: "#/catalog" }, "Cancel")),
    status);

  function clearErrors() {
    summary.hidden = true;
    replace(summaryList);
    for (const { control, error } of fields.values()) {
      error.textContent = "";
      control.removeAttribute("aria-invalid");
    }
  }

  // errors: [{path, message}]; `extra`: more content for the summary (an offer, a link).
  function showErrors(errors, ...extra) {
    replace(summaryList, errors.map(({ path, message }) => {
      const target = fields.get(path);
      if (!target) return h("li", {}, message);
      target.error.textContent = target.error.textContent ? `${target.error.textContent} ${message}` : message;
      target.control.setAttribute("aria-invalid", "true");
      const focus = (event) => { event.preventDefault(); target.control.focus(); }; // not a route change
      const link = h("a", { href: `#${target.control.id}`, on: { click: focus } }, `${labelOf(path)}: ${message}`);
      return h("li", {}, link);
    }), extra.map((item) => h("li", {}, item)));
    summary.hidden = false;
    summary.focus();
  }

  function busy(text) {
    submit.disabled = Boolean(text);
    status.textContent = text || "";
  }

  function variables(existing) {
    const values = {};
    for (const { variable, editable, control } of variableFields) {
      if (!editable) continue;
      const value = controlValue(variable, control);
      if (value === "") {
        if (variable.sensitive && existing?.variables?.[variable.name] === MASK) values[variable.name] = MASK;
        continue;
      }
      if (!variable.sensitive && value === variable.default) continue; // the template's own value
      if (variable.multi_select && value === JSON.stringify(chosenList(variable.default))) continue;
      values[variable.name] = value;
    }
    return values;
  }

  // `existing` ({etag, variables}): update that environment (If-Match) instead of creating one.
  async function launch(existing = null) {
    clearErrors();
    const envName = nameField.control.value.trim();
    if (!DNS_LABEL.test(envName) || envName.length > 63) {
      showErrors([{ path: "name", message: envName
        ? "use lowercase letters, digits and '-' (not at either end), at most 63 characters"
        : "give the environment a name" }]);
      return;
    }
    const body = { template: { name: template.name, version: template.version }, variables: variables(existing) };
    const headers = existing ? { "If-Match": existing.etag } : {};
    busy("Saving the environment…");
    try {
      await ctx.api.request("PUT", `/v1/environments/${enc(envName)}`, { body, headers, signal });
    } catch (error) {
      if (signal.aborted) return;
      busy("");
      if (!existing && error instanceof ApiError && error.status === 412 && error.path === "If-Match") {
        await offerUpdate(envName);
      } else {
        showErrors(problemErrors(error));
      }
      return;
    }
    busy("Starting the deploy…");
    let run;
    try {
      run = await ctx.api.post(`/v1/environments/${enc(envName)}/runs`, { action: "deploy" }, { signal });
    } catch (error) {
      if (signal.aborted) return;
      busy("");
      const message = `Environment ${envName} was saved, but its deploy did not start: ${error.message}`;
      showErrors([{ path: "", message }],
        h("a", { href: `#/environments/${enc(envName)}` }, `Open environment ${envName}`));
      return;
    }
    busy("");
    ctx.navigate(`#/runs/${enc(run.run_id)}`);
  }

  // The name is taken: say by what, and offer to update it with these values (If-Match: its ETag).
  async function offerUpdate(envName) {
    let current;
    try {
      current = await ctx.api.request("GET", `/v1/environments/${enc(envName)}`, { signal });
    } catch (error) {
      if (!signal.aborted) showErrors(problemErrors(error));
      return;
    }
    const env = current.value;
    const etag = current.headers.get("ETag");
    const uses = `${env.template.name} ${env.template.version}`;
    const message = `an environment named ${envName} exists already (template ${uses}, ${env.status})`;
    showErrors([{ path: "name", message }],
      h("button", {
        type: "button",
        on: {
          click: () => {
            nameField.control.value = envName; // the offer is for this one, whatever was typed since
            launch({ etag, variables: env.variables });
          },
        },
      }, `Update ${envName} with these values and deploy it`),
      h("a", { href: `#/environments/${enc(envName)}` }, `Open environment ${envName}`));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!submit.disabled) launch();
  });
  return form;
}

// The problems of an API error as [{path, message}]: each template problem at its own path
// (`variables.region`), else the problem's one path (`name`, `template`, `If-Match`).
function problemErrors(error) {
  if (!(error instanceof ApiError)) return [{ path: "", message: String(error.message || error) }];
  if (error.problems.length) {
    // A hint is shown only where no field is named: those beside a field speak of the CLI (--var).
    return error.problems.map((p) => ({
      path: p.path || "",
      message: p.hint && !(p.path || "").startsWith("variables.") ? `${p.message} (${p.hint})` : p.message,
    }));
  }
  return [{ path: error.path, message: error.problem.detail || error.problem.title || `HTTP ${error.status}` }];
}

function labelOf(path) {
  return path === "name" ? "Environment name" : path.replace(/^variables\./, "");
}
