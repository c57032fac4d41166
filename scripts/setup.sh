# Shared by the scripts in this folder: installs what the project needs on a fresh machine, quietly.

setup_uv_workspace() {
    if ! command -v uv >/dev/null 2>&1; then
        echo "== installing uv"
        # A Debian system Python refuses pip installs (PEP 668) unless told otherwise; uv is self-contained.
        python3 -m pip install --quiet uv 2>/dev/null || python3 -m pip install --quiet --break-system-packages uv
        hash -r
        if ! command -v uv >/dev/null 2>&1; then
            # Installed where PATH does not look (say, a pyenv version without a rehash): run it through Python.
            uv() { python3 -m uv "$@"; }
        fi
    fi
    echo "== installing the workspace"
    uv sync --frozen --quiet
}

setup_redis_server() {
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "== installing redis-server (Debian package)"
        if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    fi
}

setup_chromium() {
    # The inspector's browser test drives Debian's chromium through its chromedriver (with selenium).
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        echo "== installing chromium and chromium-driver (Debian packages)"
        if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
}
