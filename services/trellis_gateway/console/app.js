// The console's shell: the signed-in session, the navigation, and a router over the URL's hash
// (#/environments, #/runs/ID ...). Each view is a module in pages/ whose `render(ctx, params)`
// returns {el, dispose?} (or a promise of it); `dispose` stops its live streams when it is left.

import { Api, ApiError } from "./api.js";
import { h, replace } from "./dom.js";

const TOKEN_KEY = "trellis.token"; // session storage: gone with the tab, never in a URL
const RANK = { viewer: 1, operator: 2, admin: 3 };

// [pattern, module]: the first match wins.
const ROUTES = [
  [/^\/signin$/, "./pages/signin.js"],
  [/^\/catalog$/, "./pages/catalog.js"],
  [/^\/catalog\/([^/]+)\/([^/]+)$/, "./pages/launch.js"],
  [/^\/environments$/, "./pages/environments.js"],
  [/^\/environments\/([^/]+)$/, "./pages/environment.js"],
  [/^\/runs\/([^/]+)$/, "./pages/run.js"],
];

const NAV = [["#/environments", "Environments"], ["#/catalog", "Catalog"]];

const session = {
  me: null, // {tenant, role, user} from GET /v1/whoami
  api: null,
};

let current = null; // the view shown: {dispose}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  session.me = null;
  session.api = null;
  location.hash = reason ? `#/signin?reason=${encodeURIComponent(reason)}` : "#/signin";
}

export async function signIn(token) {
  const api = new Api(token);
  const me = await api.get("/v1/whoami"); // an ApiError (401) when the token is not known
  sessionStorage.setItem(TOKEN_KEY, token);
  session.api = new Api(token, () => signOut("Your token is no longer accepted: sign in again."));
  session.me = me;
  return me;
}

function context() {
  return {
    api: session.api,
    me: session.me,
    can: (role) => Boolean(session.me) && RANK[session.me.role] >= RANK[role],
    navigate: (hash) => { location.hash = hash; },
    title: (text) => { document.title = text ? `${text} · Trellis` : "Trellis"; },
    signIn,
    signOut,
  };
}

function renderChrome() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (!session.me) {
    replace(nav);
    replace(who);
    return;
  }
  const path = location.hash.slice(1);
  replace(nav, NAV.map(([href, label]) =>
    h("a", { href, "aria-current": path.startsWith(href.slice(1)) ? "page" : undefined }, label)));
  replace(who,
    h("span", {}, `${session.me.user || "token"} · ${session.me.tenant} · `),
    h("span.role", {}, session.me.role),
    h("button.link", { type: "button", on: { click: () => signOut() } }, "Sign out"),
  );
}

async function route() {
  const [path, query = ""] = location.hash.slice(1).split("?");
  if (!session.me && path !== "/signin") {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      try {
        await signIn(saved);
      } catch {
        signOut("Your token is no longer accepted: sign in again.");
        return;
      }
    } else {
      location.hash = `#/signin?next=${encodeURIComponent(path || "/environments")}`;
      return;
    }
  }
  if (!path || path === "/") {
    location.hash = "#/environments";
    return;
  }
  const match = ROUTES.map(([pattern, module]) => [pattern.exec(path), module]).find(([m]) => m);
  current?.dispose?.();
  current = null;
  renderChrome();
  const main = document.getElementById("main");
  if (!match) {
    replace(main, h("h1", {}, "Not found"), h("p", {}, `The console has no page ${path}.`));
    return;
  }
  const [found, module] = match;
  const params = found.slice(1).map(decodeURIComponent);
  const ctx = { ...context(), query: new URLSearchParams(query) };
  replace(main, h("p.loading", { role: "status" }, "Loading…"));
  try {
    const view = await (await import(module)).render(ctx, ...params);
    if (location.hash.slice(1).split("?")[0] !== path) { view.dispose?.(); return; } // left meanwhile
    current = view;
    replace(main, view.el);
  } catch (error) {
    const detail = error instanceof ApiError ? error.message : String(error);
    replace(main, h("h1", {}, "Could not show this page"), h("p.error", { role: "alert" }, detail));
  }
}

window.addEventListener("hashchange", route);
route();
