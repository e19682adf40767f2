"""The console's run page in chromium: how long from navigating to #/runs/ID until its graph is drawn
(the frame after it is in the document), for a run of 100 resources and one of 1,000 (3 activities
each plus two environment hooks: 302 and 3,002 activities), side by side; then how long "Expand all"
takes on each (every activity a node). The runs are published on the bus as the services publish
them (tests/gateway/test_console_run.py `publish_big_run`), half their activities done, and
projected by the real store; the page reads them from the real gateway. Median of 3, printed;
nothing is asserted on time. Run with `make bench` (or
`pytest -m bench tests/bench/test_console_bench.py -s`).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import aiohttp
import pytest

from trellis_core.bus import Bus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from console_support import browser_page, sign_in
from gateway_support import Api as GatewayApi
from gateway_support import create_tenant
from runs_support import Api
from test_console_run import projected, publish_big_run
from test_gateway_bench import gateway_url

pytestmark = pytest.mark.bench
SIZES = (100, 1_000)
REPEATS = 3
__all__ = ["gateway_url"]  # the store and gateway fixture, shared with the gateway bench

# Go elsewhere, then to the run page; milliseconds until the graph is in the document and painted.
TIME_TO_GRAPH = """
async (hash) => {
  const drawn = () => document.querySelector("#main .graph-scroll[data-drawn]");
  const t0 = performance.now();
  location.hash = hash;
  await new Promise((resolve) => {
    if (drawn()) return resolve();
    const watch = new MutationObserver(() => { if (drawn()) { watch.disconnect(); resolve(); } });
    watch.observe(document.getElementById("main"), { childList: true, subtree: true });
  });
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  return [performance.now() - t0, document.querySelectorAll(".rg-node").length];
}
"""

TIME_TO_EXPAND = """
async () => {
  const t0 = performance.now();
  [...document.querySelectorAll(".graph-tools button")].find((b) => b.textContent === "Expand all").click();
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  return [performance.now() - t0, document.querySelectorAll(".rg-node").length];
}
"""


async def test_run_page_time_to_graph(bus: Bus, gateway_url: tuple[str, str], unique: str, tmp_path: Path) -> None:
    url, admin = gateway_url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        tenant = await create_tenant(GatewayApi(session, url), admin, unique)
        reader = Api(url, session, unique, {"admin": tenant.admin}, None, bus)
        runs: dict[int, str] = {}
        for n in SIZES:
            activities = 3 * n + 2
            runs[n] = await publish_big_run(bus, unique, f"env{n}", n, done=activities // 2)
            await projected(reader, runs[n], activities, activities // 2, within=300)
    figures: dict[int, tuple[float, int, float, int]] = {}
    async with browser_page(url, tmp_path, []) as page:
        await sign_in(page, tenant.viewer)
        for n, run_id in runs.items():
            draws: list[float] = []
            expands: list[float] = []
            for _ in range(REPEATS):
                await page.evaluate("location.hash = '#/nowhere'")
                await page.wait_for_selector("text=The console has no page")
                ms, nodes = await page.evaluate(TIME_TO_GRAPH, f"#/runs/{run_id}")
                draws.append(ms)
                ms_open, open_nodes = await page.evaluate(TIME_TO_EXPAND)
                expands.append(ms_open)
            figures[n] = (statistics.median(draws), nodes, statistics.median(expands), open_nodes)
    load = os.getloadavg()[0]
    print(f"\nRun page in chromium (gateway + store + NATS), median of {REPEATS}, load average {load:.2f}")
    for n, (draw, nodes, expand, open_nodes) in figures.items():
        print(
            f"  {n:>5,} resources ({3 * n + 2:,} activities): navigation to graph drawn {draw:7.1f} ms "
            f"({nodes:,} nodes); expand all {expand:7.1f} ms ({open_nodes:,} nodes)"
        )
    big, small = max(SIZES), min(SIZES)
    print(f"  ratio {big:,}/{small:,} to graph drawn: {figures[big][0] / figures[small][0]:.1f}x")
