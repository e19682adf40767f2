// The catalog (#/catalog): the tenant's published template documents (GET /v1/templates) grouped
// by kind, EnvironmentTemplates first, each name with its versions and their descriptions. An
// operator or admin gets a "Launch" link on every EnvironmentTemplate version (pages/launch.js).

import { ago, h, when } from "../dom.js";

const KIND_TITLES = {
  EnvironmentTemplate: "Environment templates",
  ResourceTemplate: "Resource templates",
  ConfigContext: "Config contexts",
  Driver: "Drivers",
  StaticResource: "Static resources",
  Repository: "Repositories",
};
const FIRST = "EnvironmentTemplate";

// Newest version first: v10 after v9 (numeric-aware), then by name.
const byVersion = (a, b) => b.version.localeCompare(a.version, undefined, { numeric: true });

export async function render(ctx) {
  ctx.title("Catalog");
  const aborter = new AbortController();
  const { documents } = await ctx.api.get("/v1/templates", { signal: aborter.signal });
  const el = h("section.catalog", { "aria-labelledby": "catalog-title" },
    h("h1", { id: "catalog-title" }, "Catalog"),
    documents.length
      ? [
        h("p.hint", {}, ctx.can("operator")
          ? "Launch an environment from a version of an environment template."
          : "Your role may read the catalog; launching an environment needs an operator."),
        ...kinds(documents).map(([kind, docs]) => kindSection(ctx, kind, docs)),
      ]
      : h("p.notice", {}, "No template is published yet. Publish a bundle with ",
        h("code", {}, "trellis template publish PATH..."), "."),
  );
  return { el, dispose: () => aborter.abort() };
}

// [[kind, documents]], EnvironmentTemplate first, then the other kinds by name.
function kinds(documents) {
  const grouped = new Map();
  for (const doc of documents) {
    if (!grouped.has(doc.kind)) grouped.set(doc.kind, []);
    grouped.get(doc.kind).push(doc);
  }
  return [...grouped].sort(([a], [b]) => (a === FIRST ? -1 : b === FIRST ? 1 : a.localeCompare(b)));
}

function byName(docs) {
  const names = new Map();
  for (const doc of [...docs].sort((a, b) => a.name.localeCompare(b.name) || byVersion(a, b))) {
    if (!names.has(doc.name)) names.set(doc.name, []);
    names.get(doc.name).push(doc);
  }
  return names;
}

function kindSection(ctx, kind, docs) {
  const id = `kind-${kind}`;
  const title = KIND_TITLES[kind] || kind;
  if (kind !== FIRST) {
    return h("section.catalog-kind", { "aria-labelledby": id },
      h("h2", { id }, title),
      h("table", {},
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Version"),
          h("th", { scope: "col" }, "Description"), h("th", { scope: "col" }, "Published"))),
        h("tbody", {}, [...docs].sort((a, b) => a.name.localeCompare(b.name) || byVersion(a, b)).map((doc) =>
          h("tr", {}, h("td", {}, doc.name), h("td", {}, doc.version), h("td", {}, doc.description),
            h("td", {}, published(doc)))))));
  }
  return h("section.catalog-kind", { "aria-labelledby": id },
    h("h2", { id }, title),
    [...byName(docs)].map(([name, versions]) => environmentTemplate(ctx, name, versions)));
}

function environmentTemplate(ctx, name, versions) {
  const id = `template-${name}`;
  const launch = ctx.can("operator");
  return h("article.card.catalog-template", { "aria-labelledby": id },
    h("h3", { id }, name),
    h("p.catalog-description", {}, versions[0].description || h("span.muted", {}, "No description.")),
    h("table", {},
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Version"), h("th", { scope: "col" }, "Description"),
        h("th", { scope: "col" }, "Published"),
        launch ? h("th", { scope: "col" }, h("span.visually-hidden", {}, "Launch")) : null)),
      h("tbody", {}, versions.map((doc) => h("tr", {},
        h("td", {}, doc.version),
        h("td", {}, doc.description),
        h("td", {}, published(doc)),
        launch
          ? h("td", {}, h("a.button", {
            href: `#/catalog/${encodeURIComponent(name)}/${encodeURIComponent(doc.version)}`,
            "aria-label": `Launch ${name} ${doc.version}`,
          }, "Launch"))
          : null)))));
}

function published(doc) {
  if (!doc.published_at) return "";
  const by = doc.published_by ? ` by ${doc.published_by}` : "";
  return h("time", { datetime: doc.published_at, title: when(doc.published_at) }, `${ago(doc.published_at)}${by}`);
}
