"""A binary tree of custom resources, each task reading its parent's output: the templates the
`trellis run` benchmark runs at 100 and 1,000 resources."""

from __future__ import annotations

from pathlib import Path

NODE = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: node}
spec:
  provider: custom
  variables:
    - {name: parent, valueType: text, value: root}
  providerOptions:
    custom:
      tasks:
        - name: make
          type: script
          options:
            script:
              script: |
                printf '{"id": "%s/x"}' "$TRELLIS_VAR_parent" > "$TRELLIS_OUTPUTS"
"""


def tree_templates(directory: Path, resources: int) -> Path:
    """Write the node template and an environment of `resources` nodes (r0 the root, r{i}'s
    parent r{(i-1)//2}) into `directory`; the environment is named `tree`."""
    lines = [
        "apiVersion: trellis.dev/v1",
        "kind: EnvironmentTemplate",
        "metadata: {name: tree}",
        "spec:",
        "  resources:",
    ]
    for i in range(resources):
        lines.append(
            f"    - {{name: r{i}, template: {{name: node}}}}"
            if i == 0
            else (
                f"    - name: r{i}\n"
                f"      template: {{name: node}}\n"
                f"      variables:\n"
                f'        - {{name: parent, valueType: text, value: "$(resource.r{(i - 1) // 2}.output.id.value)$"}}'
            )
        )
    environment = "---\napiVersion: trellis.dev/v1\nkind: Environment\nmetadata: {name: tree}\n"
    environment += "spec:\n  template: {name: tree}\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.yaml").write_text(NODE)
    (directory / "tree.yaml").write_text("\n".join(lines) + "\n" + environment)
    return directory
