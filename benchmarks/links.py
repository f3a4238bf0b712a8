"""Several nodes over emulated links: DDP over gloo against the parameter-server engine, across network namespaces.

Usage (as root)::

    python benchmarks/links.py --out docs/figures/links.json --plot docs/figures/links.png   # about 15 minutes

Builds ``--nodes`` Linux network namespaces, one per "node", each joined by a veth pair to a bridge in one more
namespace (the "switch"). Every link is shaped on both ends by ``tc qdisc ... tbf`` (each node's uplink and downlink
run at the rate; ``netem`` is not available on these kernels, ``tbf`` is). One worker process runs in each node's
namespace (``torch.distributed``'s environment: ``MASTER_ADDR`` is node 0's address, gloo bound to the node's veth),
so every byte between workers crosses the shaped links. Only addresses in ``10.231.0.0/24`` inside the namespaces
this benchmark creates are used; nothing else is contacted. Everything is torn down at exit, on an error or on
Ctrl-C, and namespaces left by an earlier run that was killed are removed first. Without root, ``ip`` or ``tc`` it
says why and exits 0.

The workload is the straggler benchmark's ``gpt``: a byte-level transformer of about 10.7M parameters (43 MB of
float32 gradients) on the offline ``python_docs`` corpus, one epoch, Adam, the last node's worker slowed k times.
For every rate in ``--rates`` and k in ``--factors``, the runs are interleaved (DDP, then each engine variant, per
repeat), and the figures are medians over ``--repeats``, printed as ratios against DDP in the same invocation:

* samples/s over the whole fit, and time to a training-loss target (moving average of worker 0's loss);
* the held-out loss after the epoch (every run sees each sample once);
* bytes through the switch per training sample (what the links carried, both directions);
* the mean staleness and the share of updates that were pipelined (``overlapped``) for the engine variants.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from straggler import _collect, _median, _report_dir, _worker_command  # noqa: E402  (one fit and its reports)

PREFIX = "lasync"  # namespaces: lasync-sw (the switch), lasync-n0, lasync-n1, ...
SUBNET = "10.231.0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class EmulatedNodes:
    """``nodes`` network namespaces behind one shaped switch; a context manager that always tears them down."""

    def __init__(self, nodes: int, prefix: str = PREFIX) -> None:
        self.nodes = nodes
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.namespaces = [f"{prefix}-n{i}" for i in range(nodes)]

    def address(self, node: int) -> str:
        return f"{SUBNET}.{node + 1}"

    def iface(self, node: int) -> str:
        return f"{self.prefix}{node}"  # the node's end of its veth pair

    def port(self, node: int) -> str:
        return f"{self.prefix}p{node}"  # the switch's end

    def __enter__(self) -> EmulatedNodes:
        remove_leftovers(self.prefix)
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, ns in enumerate(self.namespaces):
                _ip("netns", "add", ns)
                _ip("link", "add", self.iface(i), "netns", ns, "type", "veth", "peer", "name", self.port(i),
                    "netns", self.switch)
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", self.iface(i))
                _ip("-n", ns, "link", "set", self.iface(i), "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", self.switch, "link", "set", self.port(i), "master", "br0")
                _ip("-n", self.switch, "link", "set", self.port(i), "up")
        except BaseException:
            self.close()
            raise
        return self

    def shape(self, rate_mbit: float) -> None:
        """Limit every link to ``rate_mbit`` in each direction (token bucket on both ends of each veth)."""
        # a bucket of 2 ms at the rate (at least 64 kB): large enough that the kernel's timer does not cap the rate,
        # small enough that a burst does not hide it
        burst = max(int(rate_mbit * 1e6 / 8 * 0.002), 64 * 1024)
        for i, ns in enumerate(self.namespaces):
            for where, dev in ((ns, self.iface(i)), (self.switch, self.port(i))):
                subprocess.run(["ip", "netns", "exec", where, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                                "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "latency", "50ms"],
                               check=True, capture_output=True, text=True)

    def switched_bytes(self) -> int:
        """Bytes the switch has forwarded so far (sent on its ports, i.e. towards the nodes)."""
        total = 0
        for i in range(self.nodes):
            stats = json.loads(_ip("-n", self.switch, "-s", "-j", "link", "show", "dev", self.port(i)).stdout)
            total += int(stats[0]["stats64"]["tx"]["bytes"])
        return total

    def command(self, node: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[node], *argv]

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        atexit.unregister(self.close)
        for ns in [*self.namespaces, self.switch]:
            _ip("netns", "del", ns, check=False)  # its veth ends (and so the pairs) go with it


def remove_leftovers(prefix: str = PREFIX) -> None:
    """Delete the namespaces of an earlier run of this benchmark that did not tear down (it was killed)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{prefix}-"):
            _ip("netns", "del", name, check=False)


def _exit_on_signal(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # atexit then tears the namespaces down


def missing_requirements() -> str | None:
    """Why this benchmark cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "it needs root (it creates network namespaces and shapes their links)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is missing (iproute2)"
    probe = f"{PREFIX}-probe"
    made = _ip("netns", "add", probe, check=False)
    _ip("netns", "del", probe, check=False)
    if made.returncode != 0:
        return f"network namespaces cannot be created here: {made.stderr.strip()}"
    return None


def run_on_nodes(args: argparse.Namespace, net: EmulatedNodes, strategy: str, variant: str, factor: float,
                 tag: str) -> dict:
    """One fit, one worker process per node; returns the straggler benchmark's figures plus the bytes switched."""
    report_dir = _report_dir(args, tag)
    run_args = argparse.Namespace(**vars(args))
    run_args.overlap = variant if variant != "ddp" else "auto"
    run_args.engine = "parameter_server"
    procs = []
    before = net.switched_bytes()
    wall = time.time()
    for node in range(net.nodes):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
        env.update(
            MASTER_ADDR=net.address(0), MASTER_PORT="29500", NODE_RANK=str(node), LOCAL_RANK="0",
            WORLD_SIZE=str(net.nodes), GLOO_SOCKET_IFNAME=net.iface(node), OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        argv = _worker_command(run_args, strategy, factor, 1, net.nodes, report_dir)
        log = open(report_dir / f"node{node}.log", "w")  # noqa: SIM115 - closed with the process below
        procs.append((subprocess.Popen(net.command(node, argv), env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True), log))
    deadline = time.monotonic() + args.run_timeout
    failed = None
    try:
        for node, (proc, _) in enumerate(procs):
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                failed = f"node {node} ran past --run-timeout"
                break
            if code != 0 and failed is None:
                failed = f"node {node} exited with {code}"
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    wall = time.time() - wall
    if failed is not None:
        tail = (report_dir / "node0.log").read_text()[-3000:]
        raise RuntimeError(f"{tag}: {failed}; node 0's log ends:\n{tail}")
    result = _collect(args, report_dir, strategy, factor, net.nodes, wall)
    result["variant"] = variant
    result["bytes_per_sample"] = (net.switched_bytes() - before) / max(result["samples"], 1)
    counters = result.get("counters") or {}
    result["overlapped_share"] = counters.get("overlapped", 0) / counters["applied"] if counters.get("applied") \
        else None
    return result


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    groups = sorted({(r["rate_mbit"], r["factor"]) for r in rows})
    names = ["ddp", *results["variants"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs = [g + j * width for g in range(len(groups))]
        by = {(r["rate_mbit"], r["factor"]): r for r in rows if r["variant"] == name}
        axes[0].bar(xs, [by[g]["throughput_ratio"] if g in by else 0 for g in groups], width, label=name)
        axes[1].bar(xs, [by[g]["val_loss"] if g in by else 0 for g in groups], width, label=name)
    labels = [f"{rate / 1000:g} Gbit/s\nk={k:g}" for rate, k in groups]
    for ax, title in zip(axes, ("samples/s against DDP", "held-out loss after one epoch")):
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], labels, fontsize=8)
        ax.set_title(title)
    losses = [r["val_loss"] for r in rows]
    axes[1].set_ylim(0.95 * min(losses), 1.02 * max(losses))  # the differences, not the distance from zero
    axes[0].axhline(1.0, color="black", linewidth=0.8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2, help="namespaces, one worker each (2 cores here: keep 2)")
    parser.add_argument("--rates", type=float, nargs="+", default=[1000.0, 10000.0], help="link rates, Mbit/s")
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 4.0], help="slowdowns k of the last node")
    parser.add_argument("--variants", nargs="+", default=["auto", "off"], choices=["auto", "off", "on"],
                        help="parameter-server overlap settings to run beside DDP")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-stride", type=int, default=2048, help="about 500 windows of 128 bytes per epoch")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-staleness", type=int, default=4)
    parser.add_argument("--target", type=float, default=2.5, help="training-loss target (moving average)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 Gbit/s, k=1, a few batches")
    parser.add_argument("--out", default=None, help="write every run and the summary as JSON here")
    parser.add_argument("--plot", default=None, help="write the figure (PNG) here")
    parser.add_argument("--work-dir", default="results/links_runs")
    parser.add_argument("--run-timeout", type=float, default=900.0)
    parser.add_argument("--replot", default=None, help="only redraw --plot from this JSON of an earlier run")
    args = parser.parse_args()
    if args.replot:
        _plot(json.loads(Path(args.replot).read_text()), Path(args.plot))
        return
    reason = missing_requirements()
    if reason is not None:
        print(f"links benchmark skipped: {reason}.")
        return
    if args.quick:
        args.rates, args.factors, args.variants, args.train_stride = [1000.0], [1.0], ["auto"], 65536
    args.epochs, args.bound_policy, args.model, args.limit_val_batches = 1, "accumulate", "gpt", 20
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    results: dict = {"nodes": args.nodes, "rates_mbit": args.rates, "factors": args.factors,
                     "variants": args.variants, "repeats": args.repeats, "target": args.target, "runs": [], "rows": []}
    print(f"{'link':>9} {'k':>3} {'run':>5} {'samples/s':>10} {'vs DDP':>7} {'t->target':>9} {'vs DDP':>7} "
          f"{'val loss':>9} {'MB/sample':>9} {'staleness':>9} {'piped':>6}")
    with EmulatedNodes(args.nodes) as net:
        for rate in args.rates:
            net.shape(rate)
            for k in args.factors:
                runs: dict[str, list[dict]] = {"ddp": [], **{v: [] for v in args.variants}}
                for i in range(args.repeats):
                    runs["ddp"].append(run_on_nodes(args, net, "ddp", "ddp", k, f"ddp_{rate:g}_k{k:g}_{i}"))
                    for v in args.variants:
                        runs[v].append(run_on_nodes(args, net, "async", v, k, f"{v}_{rate:g}_k{k:g}_{i}"))
                ddp_thr = statistics.median(r["samples_per_s"] for r in runs["ddp"])
                ddp_ttt = _median([r["time_to_target"] for r in runs["ddp"]])
                for name, group in runs.items():
                    for r in group:
                        results["runs"].append({"rate_mbit": rate, **{key: v for key, v in r.items()
                                                                      if key != "series"}})
                    thr = statistics.median(r["samples_per_s"] for r in group)
                    ttt = _median([r["time_to_target"] for r in group])
                    stale = [r["staleness_mean"] for r in group if r["staleness_mean"] is not None]
                    piped = [r["overlapped_share"] for r in group if r["overlapped_share"] is not None]
                    row = {
                        "rate_mbit": rate, "factor": k, "variant": name, "samples_per_s": thr,
                        "throughput_ratio": thr / ddp_thr, "time_to_target": ttt,
                        "time_ratio": None if ttt is None or ddp_ttt is None else ttt / ddp_ttt,
                        "val_loss": statistics.median(r["val_loss"] for r in group),
                        "bytes_per_sample": statistics.median(r["bytes_per_sample"] for r in group),
                        "staleness_mean": statistics.median(stale) if stale else None,
                        "overlapped_share": statistics.median(piped) if piped else None,
                    }
                    results["rows"].append(row)
                    print(
                        f"{rate / 1000:>5g} Gb/s {k:>3g} {name:>5} {thr:>10.1f} {row['throughput_ratio']:>7.2f} "
                        f"{_fmt(ttt, '.1f'):>9} {_fmt(row['time_ratio'], '.2f'):>7} {row['val_loss']:>9.3f} "
                        f"{row['bytes_per_sample'] / 1e6:>9.2f} {_fmt(row['staleness_mean'], '.2f'):>9} "
                        f"{_fmt(row['overlapped_share'], '.2f'):>6}",
                        flush=True,
                    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    if args.plot:
        _plot(results, Path(args.plot))


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


if __name__ == "__main__":
    main()
