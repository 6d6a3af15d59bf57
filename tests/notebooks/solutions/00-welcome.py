# Reference solutions for labs/00-welcome.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `c` come from
# the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: apply-hello
c.apply("manifests/hello.yaml")

# %% exercise: find-ip
out = c.pod("hello").sh("ip -4 -br addr show eth0")
print(out)
hello_ip = out.split()[2].split("/")[0]  # "eth0@if5  UP  10.244.1.2/24" -> 10.244.1.2
