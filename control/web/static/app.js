// The mesh-control web page: fetches /api/mesh every few seconds and draws it. DOM APIs
// only (textContent, never innerHTML): names and NACK messages come from nodes.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WIDTH = 640;
  const HEIGHT = 420;
  const NODE_R = 26;
  const STATE_TEXT = {
    ok: "ok",
    degrading: "degrading",
    half_open: "breaker half-open",
    open: "breaker open",
    caller: "caller",
    serving: "serving",
    draining: "draining",
    node_away: "node away",
  };

  const SHORT_STATE = { half_open: "half-open", node_away: "away" };
  const LEVELS = ["ok", "warn", "bad"];
  const STATE_LEVEL = { ok: 0, degrading: 1, half_open: 1, open: 2, caller: 0 };
  const LEVEL_OF_EDGE = { ok: 0, warn: 1, bad: 2 };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null && value !== "") node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function replaceRows(id, rows, columns, emptyText) {
    const body = document.getElementById(id);
    if (rows.length === 0) rows = [el("tr", {}, el("td", { colspan: columns, class: "empty" }, emptyText))];
    body.replaceChildren(...rows);
  }

  function when(iso) {
    if (!iso) return el("span", {}, "");
    const date = new Date(iso);
    return el("time", { datetime: iso, title: iso }, date.toLocaleString());
  }

  function stateSpan(state, text) {
    return el("span", { class: "state " + state }, text || STATE_TEXT[state] || state);
  }

  function percent(rate) {
    return (100 * (Number(rate) || 0)).toFixed(1) + "%";
  }

  function edgeClass(edge) {
    const rate = Number(edge.error_rate) || 0;
    if (edge.breaker === "open" || rate >= 0.05) return "bad";
    if (edge.breaker === "half_open" || edge.warning || rate >= 0.01) return "warn";
    return "ok";
  }

  // -- the graph ----------------------------------------------------------------------------

  // Services on a circle, in name order (the same state always draws the same picture),
  // the circle grown so that neighbours keep apart; the view box follows it.
  function layout(names) {
    const positions = new Map();
    const n = names.length;
    const spaced = (n * (2 * NODE_R + 40)) / (2 * Math.PI);
    const radius = n <= 1 ? 0 : Math.max(HEIGHT / 2 - NODE_R - 30, spaced);
    const width = Math.max(WIDTH, 2 * (radius + NODE_R + 70));
    const height = Math.max(HEIGHT, 2 * (radius + NODE_R + 30));
    names.forEach((name, i) => {
      const angle = -Math.PI / 2 + (2 * Math.PI * i) / n;
      positions.set(name, {
        x: width / 2 + radius * Math.cos(angle),
        y: height / 2 + radius * Math.sin(angle),
      });
    });
    return { positions, width, height };
  }

  function drawGraph(doc) {
    const states = new Map(doc.services.map((s) => [s.name, s.state]));
    const edges = doc.traffic.edges || [];
    for (const edge of edges) {
      for (const name of [edge.caller, edge.service]) {
        if (name && !states.has(name)) states.set(name, "caller");
      }
    }
    const names = [...states.keys()].sort();
    const { positions: at, width, height } = layout(names);
    document.getElementById("graph").setAttribute("viewBox", `0 0 ${width} ${height}`);

    const edgeGroup = document.getElementById("graph-edges");
    const drawnEdges = [];
    for (const edge of edges) {
      const from = at.get(edge.caller);
      const to = at.get(edge.service);
      if (!from || !to || edge.caller === edge.service) continue;
      const dx = to.x - from.x;
      const dy = to.y - from.y;
      const length = Math.hypot(dx, dy) || 1;
      const ux = dx / length;
      const uy = dy / length;
      const ox = -uy * 5; // A -> B and B -> A side by side
      const oy = ux * 5;
      const kind = edgeClass(edge);
      const label = `${(Number(edge.rps) || 0).toFixed(1)} rps · ${percent(edge.error_rate)}`;
      const group = svg("g", {
        class: "edge " + kind,
        "data-caller": edge.caller,
        "data-service": edge.service,
      });
      group.append(
        svg("title", {}, `${edge.caller} → ${edge.service}: ${label}` +
          (edge.breaker ? `, breaker ${edge.breaker}` : "") + (edge.warning ? `, ${edge.warning}` : "")),
        svg("line", {
          x1: from.x + ux * NODE_R + ox,
          y1: from.y + uy * NODE_R + oy,
          x2: to.x - ux * (NODE_R + 2) + ox,
          y2: to.y - uy * (NODE_R + 2) + oy,
          "marker-end": `url(#arrow-${kind})`,
        }),
        svg("text", { x: (from.x + to.x) / 2 + ox * 3, y: (from.y + to.y) / 2 + oy * 3 }, label),
      );
      drawnEdges.push(group);
    }
    edgeGroup.replaceChildren(...drawnEdges);

    // A service's colour: the worst of its breakers and warnings and of its callers' errors.
    const level = new Map(names.map((name) => [name, STATE_LEVEL[states.get(name)] || 0]));
    for (const edge of edges) {
      const worse = Math.max(level.get(edge.service) || 0, LEVEL_OF_EDGE[edgeClass(edge)]);
      level.set(edge.service, worse);
    }
    const nodeGroup = document.getElementById("graph-nodes");
    const drawnNodes = names.map((name) => {
      const state = states.get(name);
      const { x, y } = at.get(name);
      const shade = state === "caller" && level.get(name) === 0 ? "" : " lvl-" + LEVELS[level.get(name)];
      const group = svg("g", { class: `svc ${state}${shade}`, "data-service": name, "data-state": state });
      group.append(
        svg("title", {}, `${name}: ${STATE_TEXT[state] || state}`),
        svg("circle", { cx: x, cy: y, r: NODE_R }),
        svg("text", { x: x, y: y + NODE_R + 14 }, name),
      );
      if (state !== "ok") group.append(svg("text", { class: "sub", x: x, y: y + 4 }, SHORT_STATE[state] || state));
      return group;
    });
    nodeGroup.replaceChildren(...drawnNodes);

    const note = document.getElementById("traffic-note");
    note.textContent = doc.traffic.available
      ? (edges.length ? "" : "No calls between services reported yet.")
      : "This server does not know the calls between services; services are shown with their breakers.";
    replaceRows(
      "calls",
      edges.map((edge) =>
        el("tr", { "data-caller": edge.caller, "data-service": edge.service, class: edgeClass(edge) },
          el("td", { title: edge.nodes ? `on ${edge.nodes.join(", ")}` : "" }, edge.caller),
          el("td", {}, edge.service),
          el("td", { class: "num" }, (Number(edge.rps) || 0).toFixed(1)),
          el("td", { class: "num" }, percent(edge.error_rate)),
          el("td", { class: "num" }, edge.p50_ms !== undefined ? `${Number(edge.p50_ms).toFixed(1)} ms` : ""),
          el("td", { class: "num" }, edge.p99_ms !== undefined ? `${Number(edge.p99_ms).toFixed(1)} ms` : ""),
          el("td", {}, edge.breaker ? stateSpan(edge.breaker) : ""),
          el("td", {}, edge.warning ? stateSpan("degrading", edge.warning) : ""),
        ),
      ),
      8,
      "No calls reported.",
    );
  }

  // -- the tables ---------------------------------------------------------------------------

  function drawServices(doc) {
    replaceRows(
      "services",
      doc.services.map((service) => {
        const notes = el("ul", { class: "plain" });
        for (const b of service.breakers) {
          notes.append(el("li", { "data-breaker": b.state, "data-node": b.node },
            stateSpan(b.state), ` on ${b.node}` + (b.reason ? ` (${b.reason})` : ""),
            b.open_until ? el("span", {}, ", until ", when(b.open_until)) : null));
        }
        for (const w of service.warnings) {
          notes.append(el("li", { "data-warning": w.state, "data-node": w.node },
            stateSpan("degrading", w.state), ` on ${w.node}` + (w.reason ? ` (${w.reason})` : "") +
            (w.detail ? `: ${w.detail}` : "") +
            (w.burn_short || w.burn_long ? `, burn ${Number(w.burn_short).toFixed(1)}/${Number(w.burn_long).toFixed(1)}` : "")));
        }
        const endpoints = el("ul", { class: "plain" });
        for (const e of service.endpoints) {
          endpoints.append(el("li", { "data-address": e.address, "data-state": e.state },
            el("span", { class: "mono" }, e.address), " ",
            stateSpan(e.state),
            (e.zone ? ` zone ${e.zone}` : "") +
            (e.source === "registered" ? `, registered by ${e.node}` : ", configured") +
            (e.weight !== 1 ? `, weight ${e.weight}` : "")));
        }
        if (service.endpoints.length === 0) endpoints.append(el("li", { class: "empty" }, "no endpoints"));
        // Where a node's agent serves each zone (0 first; 1 once 0 has no usable endpoint).
        const byNode = new Map();
        for (const z of service.zone_priorities) {
          byNode.set(z.node, [...(byNode.get(z.node) || []), `${z.zone || "(no zone)"} ${z.priority}`]);
        }
        for (const [node, zones] of byNode) {
          endpoints.append(el("li", { class: "note", "data-zones": node },
            `zone priorities on ${node}: ${zones.join(", ")}`));
        }
        return el("tr", { "data-service": service.name, "data-state": service.state },
          el("th", { scope: "row" }, service.name),
          el("td", {}, stateSpan(service.state)),
          el("td", {}, notes),
          el("td", {}, endpoints));
      }),
      4,
      "No services yet (meshctl apply -f SERVICE.yaml).",
    );
  }

  function drawNodes(doc) {
    replaceRows(
      "nodes",
      doc.nodes.map((node) => {
        const broken = node.components.filter((c) => c.state !== "running");
        const health = el("span", {}, node.health ? stateSpan(node.health, node.health) : "not reported");
        for (const c of broken) {
          health.append(el("div", {}, `${c.name}: ${c.state}` + (c.last_error ? ` (${c.last_error})` : "")));
        }
        return el("tr", { "data-node": node.node_id },
          el("th", { scope: "row" }, node.node_id),
          el("td", {}, node.zone),
          el("td", {}, node.connected
            ? el("span", {}, "connected since ", when(node.connected_since))
            : stateSpan("node_away", "no stream (kept for the grace)")),
          el("td", {}, health),
          el("td", { class: "num" }, node.breakers));
      }),
      5,
      "No node connected.",
    );
  }

  function drawNacks(doc) {
    replaceRows(
      "nacks",
      doc.nacks.map((nack) =>
        el("tr", { "data-node": nack.node },
          el("td", {}, when(nack.time)),
          el("td", {}, nack.node),
          el("td", {}, nack.client || "(the agent)"),
          el("td", {}, nack.type),
          el("td", { class: "mono" }, nack.version),
          el("td", {}, nack.message))),
      6,
      "No NACKs.",
    );
  }

  function drawChanges(doc) {
    replaceRows(
      "changes",
      doc.changes.map((change) =>
        el("tr", { "data-outcome": change.outcome },
          el("td", {}, when(change.time)),
          el("td", {}, change.who),
          el("td", {}, change.action),
          el("td", {}, change.services.join(", ")),
          el("td", {}, stateSpan(change.outcome === "ok" ? "ok" : "refused", change.outcome),
            change.reason ? ` (${change.reason})` : "",
            change.detail ? el("div", { class: "note" }, change.detail) : null),
          el("td", { class: "num" }, change.revision || ""),
          el("td", {}, change.message))),
      7,
      "No admin writes kept.",
    );
  }

  function drawProblems(doc) {
    const items = [
      ...doc.store_problems.map((p) => el("li", {}, `store: ${p.source}: ${p.message}`)),
      ...doc.errors.map((text) => el("li", {}, text)),
    ];
    document.getElementById("problems").replaceChildren(...items);
    document.getElementById("problems-section").hidden = items.length === 0;
  }

  function render(doc) {
    const open = doc.services.filter((s) => s.state === "open").length;
    document.getElementById("summary").textContent =
      `server ${doc.server_id} · store revision ${doc.store_revision} · ` +
      `${doc.services.length} services · ${doc.nodes.length} nodes · ` +
      `${open} with an open breaker · updated ${new Date(doc.generated_at).toLocaleTimeString()}`;
    drawProblems(doc);
    drawGraph(doc);
    drawServices(doc);
    drawNodes(doc);
    drawNacks(doc);
    drawChanges(doc);
    document.body.dataset.loaded = "true";
  }

  function say(text) {
    document.getElementById("status").textContent = text;
  }

  async function refresh() {
    try {
      const response = await fetch("/api/mesh", { cache: "no-store", credentials: "same-origin" });
      if (response.status === 401) {
        say("The operator token is needed: reload the page to give it.");
        return;
      }
      if (!response.ok) {
        say(`mesh-control answered ${response.status}; retrying`);
        return;
      }
      render(await response.json());
      say("");
    } catch (error) {
      say(`cannot reach mesh-control (${error.message}); retrying`);
    } finally {
      window.setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();
