#!/usr/bin/env bash
# Set up everything the lab needs on Debian 12 (used by the README, CI and the Vagrant VM alike).
#
#   sudo bash scripts/setup.sh
#
# Idempotent: a second run skips what is already done and takes about a second.
#   LAB_KIT_FORCE_APT=1   run apt-get update + install even when every package is installed
# Steps: Debian packages -> kernel modules -> .venv (Debian's /usr/bin/python3, with system
# site-packages for python3-mininet) -> pip install -e '.[dev]' -> Jupyter kernel "lab_kit".
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/setup.sh must run as root (it installs Debian packages): sudo bash scripts/setup.sh" >&2
    exit 1
fi

start_ns=$(date +%s%N)
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
repo=$(pwd)

say() { printf '==> %s\n' "$*"; }

# --- Debian packages ------------------------------------------------------------------------
# bridge-utils + net-tools: Mininet's LinuxBridge calls brctl and ifconfig.
packages=(
    mininet iproute2 iptables nftables conntrack tcpdump iputils-ping curl dnsutils
    containernetworking-plugins graphviz python3 python3-venv python3-dev iperf3 socat
    bridge-utils net-tools kmod procps psmisc util-linux ethtool bird2 dnsmasq-base dnsperf
    nginx-light wrk git make
)

missing=()
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null || true)
for p in "${packages[@]}"; do
    if ! grep -qx "$p install ok installed" <<<"$installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ] || [ "${LAB_KIT_FORCE_APT:-0}" = 1 ]; then
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing Debian packages (missing: ${missing[*]})"
    else
        say "installing Debian packages (LAB_KIT_FORCE_APT=1)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${packages[@]}"
else
    say "Debian packages: all ${#packages[@]} installed (LAB_KIT_FORCE_APT=1 forces apt-get)"
fi

# --- kernel modules (built-in or absent ones are fine: lab_kit.doctor says what is missing) ---
say "loading kernel modules"
for m in br_netfilter vxlan veth bridge nf_conntrack; do
    modprobe -q "$m" >/dev/null 2>&1 || true
done

# --- virtualenv from Debian's interpreter ------------------------------------------------------
# Not `python3` from PATH (it may be a pyenv shim): Mininet's Python module comes from Debian's
# python3-mininet, which only Debian's /usr/bin/python3 sees, through --system-site-packages.
venv="$repo/.venv"
stamp="$venv/.lab_kit-setup"
venv_ok() {
    [ -x "$venv/bin/python" ] && [ -f "$venv/pyvenv.cfg" ] \
        && grep -qx 'include-system-site-packages = true' "$venv/pyvenv.cfg" \
        && grep -qx 'home = /usr/bin' "$venv/pyvenv.cfg" \
        && "$venv/bin/python" -c 'import sys' >/dev/null 2>&1
}
if venv_ok; then
    say "virtualenv .venv exists"
else
    if [ -e "$venv" ]; then
        say "recreating .venv (not made from /usr/bin/python3 with --system-site-packages)"
        rm -rf "$venv"
    else
        say "creating .venv from /usr/bin/python3"
    fi
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi

# --- Python packages -------------------------------------------------------------------------
pip_ran=0
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
    say "Python packages up to date (.venv/.lab_kit-setup is newer than pyproject.toml)"
else
    say "installing lab_kit and its Python dependencies into .venv (pip install -e '.[dev]')"
    rm -f "$stamp"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install -q -e '.[dev]'
    pip_ran=1
fi

# --- Jupyter kernel --------------------------------------------------------------------------
kernel_json="$venv/share/jupyter/kernels/lab_kit/kernel.json"
if [ "$pip_ran" = 0 ] && [ -f "$kernel_json" ] \
    && grep -qF "\"$venv/bin/python\"" "$kernel_json"; then
    say "Jupyter kernel \"Python (lab_kit)\" registered"
else
    say "registering Jupyter kernel \"Python (lab_kit)\""
    "$venv/bin/python" -m ipykernel install --sys-prefix --name lab_kit \
        --display-name "Python (lab_kit)" >/dev/null
fi

touch "$stamp"

end_ns=$(date +%s%N)
elapsed_ms=$(((end_ns - start_ns) / 1000000))
printf '==> setup done in %d.%03d s — next: sudo make lab (or sudo make test)\n' \
    $((elapsed_ms / 1000)) $((elapsed_ms % 1000))
