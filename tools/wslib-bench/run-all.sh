#!/usr/bin/env bash
# Reproduces the figures of docs/decisions/0001-websocket-library.md.
# Loopback only; every run is bounded (5 s load, 5,000 connections, 20 s RSS settle)
# and every server is stopped by its PID. Takes about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release
B=./target/release/wslib-bench
mkdir -p results
# Throughput, tokio-tungstenite client, ping-pong (window 1) and pipelined (window 16).
# Client pinned to CPU 1, server to CPU 0.
taskset -c 1 $B run --bench throughput --server-cpu 0 --reps 3 --secs 5 --conns 50 --window 1 --src 120 --port 20200 | tee results/throughput-w1.txt
taskset -c 1 $B run --bench throughput --server-cpu 0 --reps 3 --secs 5 --conns 50 --window 16 --src 160 --port 20300 | tee results/throughput-w16.txt
# Throughput, cheap raw client, pipelined: the server is the bottleneck.
taskset -c 1 $B run --bench throughput --server-cpu 0 --raw-client --reps 3 --secs 5 --conns 50 --window 16 --src 130 --port 20900 | tee results/throughput-raw-w16.txt
# Idle memory, 5,000 connections.
$B run --bench memory --reps 3 --conns 5000 --libs tungstenite,tungstenite-4k,axum,fastwebsockets,tokio-websockets,yawc,yawc-deflate,yawc-deflate-pool --src 200 --port 20400 | tee results/memory-5000.txt
$B run --bench memory --reps 2 --conns 5000 --libs floor,tungstenite-r4k,tungstenite --src 60 --port 20600 | tee results/memory-5000-diag.txt
