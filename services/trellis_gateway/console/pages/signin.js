// Sign in with a bearer token: the tenant and role come from it (GET /v1/whoami).

import { ApiError } from "../api.js";
import { h } from "../dom.js";

export function render(ctx) {
  ctx.title("Sign in");
  const reason = ctx.query.get("reason");
  const next = ctx.query.get("next") || "/environments";
  const error = h("p.error", { id: "signin-error", role: "alert" });
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "signin-error",
  });
  const form = h("form.card.signin", {
    on: {
      submit: async (event) => {
        event.preventDefault();
        error.textContent = "";
        try {
          await ctx.signIn(input.value.trim());
          ctx.navigate(`#${next}`);
        } catch (failure) {
          error.textContent = failure instanceof ApiError && failure.status === 401
            ? "This token is not known (or was revoked)."
            : `Could not sign in: ${failure.message}`;
          input.focus();
        }
      },
    },
  },
  h("h1", {}, "Sign in to Trellis"),
  reason ? h("p.notice", {}, reason) : null,
  h("label", { for: "token" }, "API token"),
  input,
  h("p.hint", {}, "The token is kept in this tab only, until you sign out or close it."),
  error,
  h("button.primary", { type: "submit" }, "Sign in"));
  return { el: form };
}
