# Reference solutions for labs/06-write-a-cni-plugin.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; `c` and `PARTS` come from
# the notebook's earlier cells.
#
# The plugin's answer is tests/cni_plugins/reference_plugin.py, the plugin the conformance suite
# is tested with. It is written in the notebook's four parts, each starting with a line
# `# === part: <name> ===`; the sections below copy one part each into PARTS (my-cni.d/), which
# is what the notebook's `%%writefile` cells do with the learner's code.
# ruff: noqa: E402, F811, F821

# %% exercise: protocol
import re
from pathlib import Path

import lab_kit

REFERENCE = (Path(lab_kit.__file__).resolve().parents[1] / "tests" / "cni_plugins"
             / "reference_plugin.py")


def write_part(part: str, file: str) -> None:
    """Copy the reference plugin's part `part` to PARTS/<file>, as a %%writefile cell would."""
    text = REFERENCE.read_text()
    m = re.search(rf"^# === part: {part} ===\n(.*?)^# === ", text, re.MULTILINE | re.DOTALL)
    assert m, f"no part {part!r} in {REFERENCE}"
    (PARTS / file).write_text(m.group(1))


write_part("protocol", "1-protocol.py")

# %% exercise: add
write_part("add", "2-add.py")

# %% exercise: apply
c.apply([pod_manifest("by-my-cni", "cniplugin-worker2")])

# %% exercise: del
write_part("del", "3-del.py")

# %% exercise: check
write_part("check", "4-check.py")
