"""Phantom AMBIGUOUS: SIGKILL `pixbatch run` against a slow, rate-limited gateway, and count the
items left in doubt whose request the gateway never received.

    /work/venv/bin/python bench/phantom.py [--kills 50] [--items 400] [--seed 11]

The emulator (its own process, ``render lazy``) allows 5 submits/s (burst 5), queues jobs for
0.1 s, processes them for 0.2 s and drops 3 % of the connections after accepting (those
become AMBIGUOUS for real: the gateway has the request). ``pixbatch run`` sends upscales of
distinct images at concurrency 32, so most items wait on the rate limiter or between 429s
at any moment. A seeded RNG kills it ``kills`` times; after each kill, before resuming:

- open intents: sends the state file logged as starting and not yet answered (the next
  run marks these items AMBIGUOUS);
- POSTs in flight: the open intents whose request the emulator received (its request log
  holds more sends of that image than the state file has answered: one intent is one send);
  of those, how many it accepted (the ledger charges them) and how many it refused (a 429
  the killed client never read);
- phantom: open intents whose request the emulator never received. The client commits an
  intent after the rate limiter's token and just before writing the request, so only a
  kill inside that window of a few milliseconds leaves one.

Target: phantom AMBIGUOUS <= 2 over all the kills.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIG_WALLET, machine, pixbatch_env, query, run_or_kill, verdict  # noqa: E402

import duckdb  # noqa: E402

from pixbatch.emulator import Dist, EmulatorConfig, start_emulator  # noqa: E402

TARGET_PHANTOM = 2


@dataclass
class PhantomFigures:
    kills: int = 0
    open_intents: list[int] = field(default_factory=list)  # per kill
    in_flight: list[int] = field(default_factory=list)  # per kill: open intents the gateway received
    accepted_at_kill: list[int] = field(default_factory=list)  # per kill: of those, the ones it accepted
    phantom: list[int] = field(default_factory=list)  # per kill: open intents it never received
    ambiguous_final: int = 0
    ambiguous_never_accepted: int = 0  # of those, items whose request the gateway never accepted (or refused)
    received: int = 0
    accepted: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        per_kill = ", ".join(f"{a}/{f}" for a, f in zip(self.open_intents, self.in_flight))
        return [
            f"SIGKILLs {self.kills}, {self.seconds:.1f} s; submits received {self.received}, accepted {self.accepted}",
            f"open intents / POSTs in flight, per kill: {per_kill}",
            f"open intents at the kills: {sum(self.open_intents)}; POSTs in flight: {sum(self.in_flight)} "
            f"({sum(self.accepted_at_kill)} accepted, {sum(self.in_flight) - sum(self.accepted_at_kill)} refused "
            f"after the kill); phantom (never received): {sum(self.phantom)}",
            f"AMBIGUOUS items at the end: {self.ambiguous_final} (never accepted by the gateway: "
            f"{self.ambiguous_never_accepted})",
        ]


def write_manifest(root: Path, n: int) -> Path:
    p = root / "phantom.yaml"
    p.write_text("version: 1\ninputs:\n" + "".join(f"  - https://img.test/p{i}.png\n" for i in range(n)) +
                 "steps:\n  - id: u\n    op: upscale\n    target: 2\n", "utf-8")
    return p


def _open_intents(state: Path) -> list[tuple[str, str, int]]:
    """(key, image, answered sends of that key) for every send logged as starting and not answered."""
    if not state.exists():  # killed before the state file was made
        return []
    try:
        rows = query(state, "SELECT a.key, i.body, (SELECT count(*) FROM attempts c WHERE c.key = a.key AND "
                            "c.outcome <> 'pending') FROM attempts a JOIN items i USING (key) WHERE a.outcome = 'pending'")
    except duckdb.Error:  # killed while the file was being created
        return []
    return [(k, json.loads(body)["image"], int(answered)) for k, body, answered in rows]


def phantom(root: Path, *, kills: int, items: int, seed: int, window: tuple[float, float] = (1.0, 2.5),
            in_process: bool = False, log=lambda s: None) -> PhantomFigures:
    rng = random.Random(seed)
    manifest = write_manifest(root, items)
    state = root / "phantom.pixbatch.duckdb"
    cfg = EmulatorConfig(seed=seed, balance_micros=BIG_WALLET, render="lazy", rate_limit=5.0, rate_burst=5,
                         queue_time=Dist(0.1, 0.1), processing_time=Dist(0.2, 0.2), drop_after_accept_rate=0.03)
    f = PhantomFigures()
    t0 = time.monotonic()
    with start_emulator(cfg, in_process=in_process) as emu:
        env = pixbatch_env(emu)
        cmd = [sys.executable, "-m", "pixbatch", "run", str(manifest), "--base-url", emu.url, "--quiet",
               "--no-download", "--no-preflight", "--concurrency", "32", "--first-poll", "0.3"]
        while f.kills < kills:
            killed, _code, _err = run_or_kill(cmd, env, rng.uniform(*window))
            if killed:
                f.kills += 1
                time.sleep(0.3)  # what was written to the socket before the kill reaches the emulator
                log_now = emu.requests().submits
                received = Counter(e.image for e in log_now)
                accepted = {e.image for e in log_now if e.accepted}
                opened = _open_intents(state)
                got = [image for _k, image, answered in opened if received[image] > answered]
                f.open_intents.append(len(opened))
                f.in_flight.append(len(got))
                f.accepted_at_kill.append(sum(1 for image in got if image in accepted))
                f.phantom.append(len(opened) - len(got))
                log(f"kill {f.kills}: {len(opened)} open intent(s), {len(got)} received by the gateway")
                continue
            break  # the work ran out before the kills did
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        sent = emu.requests().submits
        f.received, f.accepted = len(sent), sum(1 for e in sent if e.accepted)
    accepted_images = {e.image for e in sent if e.accepted}
    ambiguous = [json.loads(b)["image"] for (b,) in query(state, "SELECT body FROM items WHERE state = 'AMBIGUOUS'")]
    f.ambiguous_final = len(ambiguous)
    f.ambiguous_never_accepted = sum(1 for image in ambiguous if image not in accepted_images)
    f.seconds = time.monotonic() - t0
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="pixbatch-bench-") as tmp:
        f = phantom(Path(tmp), kills=a.kills, items=a.items, seed=a.seed,
                    log=lambda s: print(s, file=sys.stderr, flush=True))
    for line in f.lines():
        print(line)
    total = sum(f.phantom)
    return verdict(total <= TARGET_PHANTOM and f.kills == a.kills,
                   f"{total} phantom AMBIGUOUS over {f.kills} SIGKILLs (target <= {TARGET_PHANTOM})")


if __name__ == "__main__":
    sys.exit(main())
