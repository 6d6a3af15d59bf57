# Reference solutions for labs/05-bgp-like-calico.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; `c`, `time`,
# `bgp_sessions` and `wait_for_bgp` come from the notebook's first cell.
# ruff: noqa: E402, F811, F821

# %% exercise: join
t0 = time.monotonic()
NEW = c.add_node(progress=print)
print(f"{NEW.name} ({NEW.ip}, pods {NEW.pod_cidr}) joined; every node routes to every other "
      f"{time.monotonic() - t0:.2f} s after add_node started")
print(*c.apply("manifests/bgp-web-new.yaml"), sep="\n")

# %% exercise: repair
for node, session, peer, state, *_ in bgp_sessions(c):
    if state == "down":  # disabled at this end; the other end shows `start Active`
        print(f"{session} on {node} (to {peer}) is disabled")
        print(c.birdc(node, f"enable {session}"))
print(f"BGP converged after {wait_for_bgp(c):.2f} s")

# %% exercise: remove
c.remove_node("bgp-worker2", progress=print)

# %% exercise: count
sessions_now = len(bgp_sessions(c)) // 2  # every session is listed at both of its ends
sessions_mesh_100 = 100 * 99 // 2  # one per pair of nodes
sessions_rr_100 = 98 * 2 + 1  # each client to each reflector, plus reflector to reflector
