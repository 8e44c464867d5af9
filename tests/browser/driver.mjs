// Drives Debian's chromium (headless) through playwright-core for tests/browser, over JSON lines:
// one command a line on stdin, one answer a line on stdout ({"ok": true, "result": ...} or
// {"ok": false, "error": "..."}); every answer also carries "errors": what the page logged as
// errors (console errors, uncaught exceptions, failed requests, CSP violations) since the start.
//
// Usage: node driver.mjs CHROMIUM_EXECUTABLE
// Commands:
//   {"op": "open", "url": URL}
//   {"op": "wait_peers", "peers": {ID: STATE | null, ...}, "timeout_ms": N}
//       until the graph shows exactly these peers (each in STATE unless null) and the table agrees;
//       answers what the page shows (see pageState)
//   {"op": "state"}
//   {"op": "screenshot", "path": PATH}
//   {"op": "close"}
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.argv[2];
if (!executablePath) {
  console.error("usage: node driver.mjs CHROMIUM_EXECUTABLE");
  process.exit(2);
}

const errors = [];
const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Root in a container: chromium's sandbox needs user namespaces it cannot have here.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1000, height: 1100 } });
page.on("console", (msg) => {
  if (msg.type() === "error") errors.push(`console: ${msg.text()}`);
});
page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
page.on("requestfailed", (req) => {
  // A poll cut short by navigation or close is not the page's fault.
  const failure = req.failure()?.errorText ?? "";
  if (!failure.includes("ERR_ABORTED")) errors.push(`requestfailed: ${req.url()} ${failure}`);
});

// What the page shows: the graph's peer nodes (with the RTT label of their edge) and the table rows.
function pageState() {
  const nodes = [...document.querySelectorAll("#graph g.peer")].map((g) => {
    const id = g.getAttribute("data-peer");
    const label = [...document.querySelectorAll("#graph text.rtt")].find((t) => t.getAttribute("data-peer") === id);
    return {
      id,
      state: g.getAttribute("data-state"),
      rtt: label ? label.textContent : null,
      sparkline_points: g.querySelectorAll(".spark polyline, .spark .dot").length,
    };
  });
  const rows = [...document.querySelectorAll("#peers tbody tr")].map((tr) => ({
    id: tr.getAttribute("data-peer"),
    state: tr.getAttribute("data-state"),
    rtt: tr.querySelector("td.rtt")?.textContent ?? null,
    addresses: tr.querySelector("td.addrs")?.textContent ?? "",
  }));
  const self = document.querySelector("#graph g.self")?.getAttribute("data-peer") ?? null;
  return {
    self,
    nodes,
    rows,
    status: document.getElementById("status").textContent,
    stale: document.body.classList.contains("stale"),
    metrics_link: [...document.querySelectorAll("a")].some((a) => a.getAttribute("href") === "metrics"),
  };
}

function showsPeers(expected) {
  const nodes = [...document.querySelectorAll("#graph g.peer")];
  const rows = [...document.querySelectorAll("#peers tbody tr")];
  const ids = Object.keys(expected);
  if (nodes.length !== ids.length || rows.length !== ids.length) return false;
  for (const g of nodes) {
    const id = g.getAttribute("data-peer");
    if (!(id in expected)) return false;
    const want = expected[id];
    if (want !== null && g.getAttribute("data-state") !== want) return false;
  }
  return rows.every((tr) => tr.getAttribute("data-peer") in expected);
}

async function handle(cmd) {
  switch (cmd.op) {
    case "open":
      await page.goto(cmd.url, { waitUntil: "load" });
      return null;
    case "wait_peers":
      await page.waitForFunction(showsPeers, cmd.peers, { timeout: cmd.timeout_ms ?? 10000, polling: 50 });
      return await page.evaluate(pageState);
    case "state":
      return await page.evaluate(pageState);
    case "screenshot":
      await page.screenshot({ path: cmd.path, fullPage: true });
      return cmd.path;
    case "close":
      await browser.close();
      return null;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const send = (answer) => process.stdout.write(JSON.stringify({ ...answer, errors }) + "\n");
send({ ok: true, result: "ready" });
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
    send({ ok: true, result: await handle(cmd) });
  } catch (e) {
    const state = await page.evaluate(pageState).catch(() => null);
    send({ ok: false, error: String(e && e.message ? e.message : e), state });
  }
  if (cmd && cmd.op === "close") break;
}
await browser.close().catch(() => {});
process.exit(0); // stdin may still be open: do not wait for it
