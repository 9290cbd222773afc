import json, sys
sys.path.insert(0, "tests")
from test_run import *
def test_x(tmp_path):
    urls = [f"https://img.test/{i}.png" for i in range(60)]
    steps = "  - id: big\n    op: upscale\n    upscale_mode: factor\n    factor: 2\n"
    m = load_manifest(write_manifest(tmp_path, urls, steps))
    with start_emulator(fast_test_config(render="lazy")) as emu:
        s = run(m, options=opts(emu, concurrency=32, budget_micros=455_000, download=False))
    print(s.http)
    for (d,) in db_rows(m.state_path, "SELECT detail FROM events WHERE kind = 'http'"):
        print(d)
    for r in db_rows(m.state_path, "SELECT key, state, error FROM items WHERE state <> 'COMPLETED' and state <> 'PENDING'"):
        print(r)
