// physarum's topology page: polls topology.json every second and redraws the graph and the table.
// Hand-written, no libraries. Everything a peer chose (its addresses) goes into the page as text
// (textContent, setAttribute), never as markup.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 1000; // between the end of one poll and the start of the next
  const FETCH_TIMEOUT_MS = 5000;
  // Beyond this many peers the edges carry no labels and the nodes no sparklines (they would
  // overlap); the table below still shows everything.
  const LABELLED_PEERS = 24;
  const RX = 320; // the ellipse the peers sit on, inside the viewBox -400 -300 800 600
  const RY = 215;

  const graph = document.getElementById("graph");
  const tbody = document.querySelector("#peers tbody");
  const statusLine = document.getElementById("status");
  const hostname = document.getElementById("hostname");

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function html(name, attrs, text) {
    const node = document.createElement(name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function ms(value) {
    if (value === null || value === undefined) return "—";
    if (value < 10) return value.toFixed(2) + " ms";
    if (value < 100) return value.toFixed(1) + " ms";
    return Math.round(value) + " ms";
  }

  function ago(seconds) {
    if (seconds < 1) return "now";
    if (seconds < 120) return Math.round(seconds) + " s ago";
    if (seconds < 7200) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  function short(id) {
    return id.length > 10 ? "…" + id.slice(-6) : id;
  }

  // A sparkline of RTTs (oldest first; null = a failed ping, drawn as a red tick below the line).
  function sparkline(history, width, height) {
    const svg = el("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}` });
    svg.appendChild(el("rect", { class: "frame", x: 0, y: 0, width, height }));
    const values = history.filter((v) => v !== null);
    const max = values.length ? Math.max(...values) : 1;
    const n = history.length;
    const step = n > 1 ? width / (n - 1) : 0;
    let points = [];
    const flush = () => {
      if (points.length === 1) {
        const [x, y] = points[0].split(",");
        svg.appendChild(el("rect", { class: "dot", x: Number(x) - 1, y: Number(y) - 1, width: 2, height: 2 }));
      } else if (points.length > 1) {
        svg.appendChild(el("polyline", { points: points.join(" ") }));
      }
      points = [];
    };
    history.forEach((v, i) => {
      const x = (i * step).toFixed(1);
      if (v === null) {
        flush();
        svg.appendChild(el("rect", { class: "fail", x: Math.max(0, i * step - 1).toFixed(1), y: height - 3, width: 2, height: 3 }));
      } else {
        const y = (height - 2 - (v / (max || 1)) * (height - 5)).toFixed(1);
        points.push(`${x},${y}`);
      }
    });
    flush();
    const title = el("title", {}, values.length ? `last ${n} pings, max ${ms(max)}` : "no RTT yet");
    svg.appendChild(title);
    return svg;
  }

  function drawGraph(snap) {
    const peers = [...snap.peers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const labelled = peers.length <= LABELLED_PEERS;
    const r = peers.length > 48 ? 6 : peers.length > LABELLED_PEERS ? 9 : 14;
    const edges = el("g", { class: "edges" });
    const labels = el("g", { class: "labels" });
    const nodes = el("g", { class: "nodes" });
    peers.forEach((peer, i) => {
      const angle = -Math.PI / 2 + (2 * Math.PI * i) / peers.length;
      const x = RX * Math.cos(angle);
      const y = RY * Math.sin(angle);
      edges.appendChild(el("line", { class: `edge ${peer.state}`, x1: 0, y1: 0, x2: x.toFixed(1), y2: y.toFixed(1), "data-peer": peer.id }));
      if (labelled) {
        const text = peer.state === "departed" ? "departed" : peer.state === "unreachable" ? "unreachable" : ms(peer.rtt_ms);
        labels.appendChild(el("text", { class: "rtt", x: (x * 0.55).toFixed(1), y: (y * 0.55 + 4).toFixed(1), "data-peer": peer.id }, text));
      }
      const g = el("g", { class: `node peer ${peer.state}`, "data-peer": peer.id, "data-state": peer.state, transform: `translate(${x.toFixed(1)},${y.toFixed(1)})` });
      g.appendChild(el("title", {}, [peer.id, peer.state, ...peer.addresses].join("\n")));
      g.appendChild(el("circle", { r }));
      if (labelled) {
        const below = y >= 0 ? 1 : -1;
        g.appendChild(el("text", { class: "name", y: below > 0 ? r + 14 : -r - 22 }, short(peer.id)));
        const spark = sparkline(peer.history, 48, 14);
        spark.setAttribute("x", -24);
        spark.setAttribute("y", below > 0 ? r + 18 : -r - 18);
        g.appendChild(spark);
      }
      nodes.appendChild(g);
    });
    const self = el("g", { class: "node self", "data-peer": snap.self.id });
    self.appendChild(el("title", {}, [snap.self.id, ...snap.self.addresses].join("\n")));
    self.appendChild(el("circle", { r: 36 }));
    self.appendChild(el("text", { y: 4 }, short(snap.self.id)));
    nodes.appendChild(self);
    graph.replaceChildren(edges, labels, nodes);
  }

  function drawTable(snap) {
    const rows = snap.peers.map((peer) => {
      const tr = html("tr", { "data-peer": peer.id, "data-state": peer.state });
      tr.appendChild(html("td", { class: "id", title: peer.id }, peer.id));
      tr.appendChild(html("td", { class: `state ${peer.state}` }, peer.state));
      tr.appendChild(html("td", { class: "num rtt" }, ms(peer.rtt_ms)));
      tr.appendChild(html("td", { class: "num" }, ms(peer.ewma_ms)));
      const spark = html("td", {});
      spark.appendChild(sparkline(peer.history, 120, 20));
      tr.appendChild(spark);
      tr.appendChild(html("td", { class: "num", title: new Date(peer.last_seen * 1000).toISOString() }, ago(peer.last_seen_ago)));
      const addrs = html("td", { class: "addrs" });
      peer.addresses.forEach((a, i) => {
        if (i) addrs.appendChild(html("br"));
        addrs.appendChild(document.createTextNode(a));
      });
      tr.appendChild(addrs);
      return tr;
    });
    tbody.replaceChildren(...rows);
  }

  function render(snap) {
    hostname.textContent = snap.self.hostname;
    document.title = `physarum topology: ${snap.self.hostname}`;
    drawGraph(snap);
    drawTable(snap);
    const reachable = snap.peers.filter((p) => p.state === "reachable").length;
    const omitted = snap.peers_omitted ? `, ${snap.peers_omitted} more not shown` : "";
    const when = new Date(snap.generated_at * 1000).toLocaleTimeString();
    statusLine.textContent = `${snap.peers_connected} peer(s) connected, ${reachable} reachable${omitted} · updated ${when}`;
    document.body.classList.remove("stale");
    document.body.dataset.updated = String(snap.generated_at);
  }

  async function poll() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch("topology.json", { cache: "no-store", signal: abort.signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
    } catch (e) {
      // Keep the last picture, greyed out, and keep polling: the monitor may come back.
      document.body.classList.add("stale");
      statusLine.textContent = `cannot reach the monitor (${e.name === "AbortError" ? "timed out" : e.message}); retrying`;
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
