#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (also fine on any machine that already has the pieces):
#   1. system packages for CPU rendering: Mesa 25 lavapipe (Vulkan, for SAPIEN/ManiSkill3) from bookworm-backports,
#      and EGL/Mesa (for MuJoCo with MUJOCO_GL=egl);
#   2. a virtual environment at $RAZOR_VENV (default .venv) with this project and its extras installed, every
#      package at the version pinned in requirements.lock (pip constraints; `python -m scripts.lock` regenerates
#      it; RAZOR_NO_LOCK=1 resolves pyproject.toml's ranges afresh instead), then `pip check`.
# Each step checks before it acts, so running it twice does nothing the second time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RAZOR_VENV:-$ROOT/.venv}"
PYTHON="${RAZOR_PYTHON:-python3.11}"
EXTRAS="${RAZOR_EXTRAS:-all}"

log() { printf '[setup] %s\n' "$*" >&2; }

mesa_major() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed -E 's/^([0-9]+:)?([0-9]+).*/\2/' || true; }

install_system_packages() {
    if ! command -v apt-get >/dev/null; then
        log "no apt-get: install a Vulkan driver (Mesa >= 24 lavapipe or NVIDIA) and EGL yourself"; return
    fi
    local pkgs_egl="libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libglvnd0"
    local have_mesa; have_mesa="$(mesa_major)"
    if [[ -n "$have_mesa" && "$have_mesa" -ge 24 ]] && dpkg-query -W $pkgs_egl libvulkan1 >/dev/null 2>&1; then
        log "system packages present (mesa-vulkan-drivers $have_mesa)"; return
    fi
    local sudo=""; [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
    local codename; codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    local target=()
    if [[ "$codename" == "bookworm" ]]; then
        # Debian 12's Mesa 22.3 lavapipe lacks descriptorBindingPartiallyBound, which SAPIEN 3 needs.
        local src=/etc/apt/sources.list.d/debian.sources
        if [[ -f "$src" ]] && ! grep -q 'bookworm-backports' "$src"; then
            log "adding bookworm-backports to $src (same mirror and keyring)"
            $sudo sed -i -E '0,/^Suites:(.*)bookworm( |$)/s//Suites:\1bookworm bookworm-backports\2/' "$src"
        elif [[ ! -f "$src" ]] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            local mirror; mirror="$(grep -hoE '^deb +[^ ]+' /etc/apt/sources.list | head -n1 | awk '{print $2}')"
            echo "deb ${mirror:-http://deb.debian.org/debian} bookworm-backports main" | $sudo tee /etc/apt/sources.list.d/backports.list >/dev/null
        fi
        target=(-t bookworm-backports)
    fi
    log "installing Vulkan (Mesa lavapipe) and EGL packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${target[@]}" \
        mesa-vulkan-drivers libvulkan1 libdrm2 $pkgs_egl >/dev/null
    log "mesa-vulkan-drivers now $(mesa_major)"
}

install_python_env() {
    local stamp="$VENV/.razor-installed"
    local constraints=()
    if [[ "${RAZOR_NO_LOCK:-0}" != 1 && -f "$ROOT/requirements.lock" ]]; then constraints=(-c "$ROOT/requirements.lock"); fi
    local want; want="$(cat "$ROOT/pyproject.toml" "${constraints[@]:1}" | sha256sum | cut -c1-16)-$EXTRAS"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        log "python environment up to date ($VENV)"; return
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        command -v "$PYTHON" >/dev/null || PYTHON=python3
        log "creating virtual environment $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    log "installing razor[$EXTRAS]${constraints:+ at the versions of requirements.lock} (first time: a few minutes, several GB for torch)"
    # Some machines list local package folders that pip warns about one by one: keep the log readable.
    "$VENV/bin/python" -m pip install -q --upgrade pip "${constraints[@]}" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
    "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" "${constraints[@]}" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
    "$VENV/bin/python" -c "import vla, envs, rollouts, eval" || { log "install failed: see the pip output above"; exit 1; }
    "$VENV/bin/python" -m pip check || { log "pip check found conflicting requirements (above)"; exit 1; }
    echo "$want" > "$stamp"
}

if [[ "${RAZOR_SKIP_SYSTEM:-0}" != 1 ]]; then install_system_packages; fi
install_python_env
log "ready: $VENV"
