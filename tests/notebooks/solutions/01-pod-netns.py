# Reference solutions for labs/01-pod-netns.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `NODE`, `POD`,
# `POD_IP`, `GATEWAY` and `PREFIX` come from the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: netns
NODE.sh(f"ip netns add {POD}")

# %% exercise: veth
NODE.sh(f"ip link add veth-byhand type veth peer name eth0 netns {POD}")

# %% exercise: address
NODE.sh(f"""
set -e
ip -n {POD} addr add {POD_IP}/{PREFIX} dev eth0
ip -n {POD} link set eth0 up
ip -n {POD} link set lo up
ip -n {POD} route add default via {GATEWAY}
ip addr add {GATEWAY}/{PREFIX} dev veth-byhand
ip link set veth-byhand up
""")

# %% exercise: localhost
NODE.sh(f"ip netns exec {POD} setsid socat TCP-LISTEN:9000,bind=127.0.0.1,fork,reuseaddr "
        "SYSTEM:'echo hello from container A' >/dev/null 2>&1 &")
# a person is slower than the next cell: wait until container A listens
NODE.sh(f"ip netns exec {POD} timeout 5 bash -c "
        "'until ss -ltnH | grep -q 127.0.0.1:9000; do sleep 0.05; done'")
