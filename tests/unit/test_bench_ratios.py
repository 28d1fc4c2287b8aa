"""scripts/bench-ratios reads the shared harness's results.jsonl: each target's verdict, and
the same-run bounds the misses are accounted with, from rows written as the harness writes
them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench-ratios"
INCOMING = "bakfs backup {} (dd bs=4M into mount incoming/, until close returns)"


def _rows() -> list[dict[str, object]]:
    def row(name: str, value: float, **extra: float) -> dict[str, object]:
        return {"name": name, "value": value, **extra}

    return [
        row("md5", 800.0),
        row("bakfs mount dd cold", 600.0, tool_cpu_s_per_gib=1.5, wall_s=1.7, s3_cpu_s=0.8),
        row("bakfs mount cold pass counters", 287),
        row("proto(py) 4M direct_io dd cold", 800.0, tool_cpu_s_per_gib=1.2),
        row("proto(py) 4M keep_cache dd cold", 640.0, wall_s=1.55, s3_cpu_s=0.6),
        row("bakfs mount rand4K cold p50", 9.0, p99_ms=15.0),
        row("bakfs mount time-to-first-4KiB (mount start)", 0.55),
        row("proto(py) 4M direct_io rand4K cold p50", 6.0, p99_ms=12.5),
        row("proto(py) 4M direct_io time-to-first-4KiB (mount start)", 0.45),
        # two runs: the median of each field is taken
        row(INCOMING.format("full"), 3.0, tool_cpu_s=3.5, s3_cpu_s=1.7),
        row(INCOMING.format("full"), 3.4, tool_cpu_s=3.9, s3_cpu_s=1.9),
        row("proto(py) 4M backup full", 2.8, tool_cpu_s=3.0, s3_cpu_s=1.6),
        row("bakfs-cli restore cold (bakfs restore LATEST FILE)", 512.0, wall_s=2.0,
            reported_s=1.6, tool_cpu_s=2.6, s3_cpu_s=0.6),
        row("FUSE file ra=1M dd#1", 4080.0, wall_s=0.26, startup_to_first4K_s=0.12),
    ]


def _run(tmp_path: Path) -> tuple[int, list[str]]:
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    done = subprocess.run([sys.executable, str(SCRIPT), str(results)], capture_output=True,
                          text=True, timeout=60)
    assert not done.stderr
    return done.returncode, done.stdout.splitlines()


def test_verdicts_are_ratios_within_the_run(tmp_path: Path) -> None:
    code, lines = _run(tmp_path)
    assert code == 1  # a target is missed
    verdict = {line[6:].split(": ")[0]: line[:4].strip()  # "ok  " or "MISS", two spaces
               for line in lines if not line.startswith("info")}
    cold = "cold dd through the mount vs the reference's direct_io cold dd"
    assert verdict[cold] == "MISS"  # 600 / 800 = 0.75
    cpu = "mount CPU per GiB cold vs the reference's + md5 of the same bytes"
    assert verdict[cpu] == "ok"  # 1.5 against 1.2 + 1024 / 800
    assert any("600.0 vs 800.0 = 0.75x" in line for line in lines)


def test_bounds_of_the_misses(tmp_path: Path) -> None:
    _code, lines = _run(tmp_path)
    info = [line for line in lines if line.startswith("info")]
    assert any("keep_cache cold dd vs its direct_io one: 640.0 vs 800.0 = 0.800x" in line
               for line in info)
    # the server spent 0.2 CPU-s more on bakfs's pass: 0.1 s on two cores, 1.7 - 0.1 = 1.6 s
    assert any("less half the server's extra CPU for it (0.80 vs 0.60 CPU-s, 287 objects "
               "fetched): 1.600 vs the reference's keep_cache 1.550 s = 0.969x its speed"
               in line for line in info)
    # the md5 of 4 MiB at 800 MiB/s is 5 ms: 9 - 5 = 4 ms against the reference's 6
    assert any("(5.00 ms at the run's 800 MiB/s): 4.00 vs the reference's 6.00 ms = 0.667x"
               in line for line in info)
    # p99 15 ms is 1.667x bakfs's p50 of 9; the reference's 12.5 is 2.083x its 6
    assert any("random 4 KiB cold p99: 15.00 ms = 1.667x its p50; the reference's 12.50 ms "
               "= 2.083x its own p50; bakfs's p99 is 1.200x the reference's" in line
               for line in info)
    # medians 3.7 + 1.8 CPU-s over two cores: 2.75 s, against the reference's 2.8 s
    assert any("full: bakfs 3.70 + the server 1.80 CPU-s on 2 cores need at least 2.75 s = "
               "0.982x the reference's 2.80 s (its own CPU needs 2.30 s)" in line
               for line in info)
    # 512 MiB/s over 2.0 s is 1024 MiB; over the restore's own 1.6 s, 640 MiB/s
    assert any("restore without its start (as it reports): 640 MiB/s = 1.067x" in line
               for line in info)
    # a 0.4 s start on one core, then (2.6 - 0.4 + 0.6) CPU-s over two cores: 1.8 s at
    # least, so 1024 MiB at 569 MiB/s at most, against the dd's 600
    assert any("restore: its start 0.40 s on one core, then bakfs 2.20 + the server 0.60 "
               "CPU-s on 2 cores need at least 1.80 s = 569 MiB/s = 0.948x the mount's "
               "cold dd" in line for line in info)
    # the image (600 MiB/s over 1.7 s: 1020 MiB) through the passthrough at 4080 MiB/s takes
    # 0.25 s: at best 1.7 - 0.25 + the restore's 0.4 s start = 1.85 s; 1.1x would need
    # 1.7 / 1.1 = 1.545 s, so a start under 0.25 - (1.7 - 1.545) = 0.095 s
    assert any("restore at best, whatever the engine: the dd's 1.70 s less the FUSE "
               "passthrough's 0.25 s, plus its start 0.40 s = 1.85 s = 0.919x the mount's "
               "cold dd; 1.1x needs a start under 0.10 s (the passthrough took 0.12 s from "
               "its start to its first 4 KiB; the reference, which imports boto3 too and "
               "reads one object, 0.45 s)" in line for line in info)
    # the first 4 KiB beside the reference's and the passthrough's, from the same run
    assert any("first 4 KiB, first mount: 0.550 s against the reference gateway's 0.450 s "
               "(the same stack, its chunk list a local file); the FUSE passthrough's (no S3 "
               "client) 0.120 s" in line for line in info)
    # no incremental rows: no bound for it, and no error
    assert not any("incr 2%" in line for line in info)
