"""POP over llama.cpp's RPC backend, on loopback: `pop-local bench` on the default model twice, on this
machine alone and split three ways (this machine's CPU: layers 0-9; two `pop-local rpc-server`s on
127.0.0.1: layers 10-20 and 21-29, the output layer here), full model vs POP alternating within each
run; one table: what POP keeps of its speedup over the network path, and what RPC itself costs.

    python benchmarks/rpc.py [--ctx 512,2048] [--repeats 5] [--threads 2] [--json benchmarks/results/rpc.json]

Loopback measures the protocol's own cost (serialisation, copies, one round trip per split and ubatch),
not a network's bandwidth or latency; on one machine the servers share its cores, but the layers run
one device after the other, so they do not compete.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pop_local.format.atomic import write_json  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pop_local.apps.cli", "rpc-server", "--port", str(port),
                             "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"127.0.0.1:{port}", proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("rpc-server did not start") from None
            time.sleep(0.2)


def bench(args, extra):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "pop_local.apps.cli", "bench", "--ctx", args.ctx, "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--decode-tokens", "32", "--json", out, *extra]
        print("+ pop-local " + " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", default="512,2048")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads here and on each server")
    ap.add_argument("--json", help="write both runs as JSON")
    a = ap.parse_args(argv)

    local = bench(a, [])
    servers = [start_server(a.threads) for _ in range(2)]
    try:
        split = bench(a, ["--rpc", ",".join(e for e, _ in servers), "--n-gpu-layers", "21", "--tensor-split", "1,1"])
    finally:
        for _, proc in servers:
            proc.terminate()
            proc.wait(timeout=30)

    print("\n| prompt tokens | local full ms | local POP ms | local speedup | RPC full ms | RPC POP ms "
          "| RPC speedup | RPC cost (full) |")
    print("|---|---|---|---|---|---|---|---|")
    for lo, sp in zip(local["prefill"], split["prefill"]):
        print(f"| {lo['n_tokens']} | {lo['full_ms']['median']:.0f} | {lo['pop_ms']['median']:.0f} | "
              f"**{lo['speedup']:.2f}x** | {sp['full_ms']['median']:.0f} | {sp['pop_ms']['median']:.0f} | "
              f"**{sp['speedup']:.2f}x** | {sp['full_ms']['median'] / lo['full_ms']['median']:.2f}x |")
    ld, sd = local["decode"], split["decode"]
    print(f"\nDecode ({ld['tokens']} tokens after {ld['context']}): local full {ld['full_tps']['median']:.1f} tok/s, "
          f"POP {ld['pop_tps']['median']:.1f}; RPC full {sd['full_tps']['median']:.1f}, "
          f"POP {sd['pop_tps']['median']:.1f}")
    if a.json:
        write_json(a.json, {"local": local, "rpc_split_3_ways": split, "threads": a.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
