# Sourced by compare.sh and ab.sh: the port check, and starting and stopping the one server under
# test at a time (pinned to core 0; its PID in $pid, for natter-bench's --server-pid; its address
# in $url). The load then runs on core 1.

pid=""

refuse_if_listening() { # SCRIPT PORT… : a server left there would be measured in place of ours
    local script="$1"
    shift
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$script: something already listens on 127.0.0.1:$port; stop it first" >&2
            exit 1
        fi
    done
}

stop_server() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}

started() { # URL CHECK… : waits (10 s at most) until CHECK passes, then makes sure $pid is ours
    local address="$1"
    shift
    for _ in $(seq 100); do "$@" && break; sleep 0.1; done
    kill -0 "$pid"  # it answers, and it is ours
    url="$address"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_natter_binary() { # BINARY DATA_DIR [serve args…]: a fresh natter on 127.0.0.1:18094
    local binary="$1" data="$2"
    shift 2
    stop_server
    rm -rf "$data"
    taskset -c 0 "$binary" serve --listen 127.0.0.1:18094 --data-dir "$data" \
        --config bench/natter.toml --log warn "$@" &
    pid=$!
    started http://127.0.0.1:18094 curl -fs http://127.0.0.1:18094/healthz -o /dev/null
}
