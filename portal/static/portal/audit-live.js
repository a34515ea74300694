// Prepend new audit events to the first, unfiltered page of the audit log as they happen.
(function () {
  "use strict";
  const script = document.currentScript;
  const path = script.dataset.socket;
  let delay = 1000;

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text || "";
    return td;
  }

  function addRow(event) {
    const table = document.querySelector("#audit-table table");
    if (!table || table.dataset.live !== "on") return;
    const rows = document.getElementById("audit-rows");
    if (rows.querySelector(`[data-event-id="${event.id}"]`)) return;
    const empty = rows.querySelector("tr.empty");
    if (empty) empty.remove();
    const tr = document.createElement("tr");
    tr.dataset.eventId = event.id;
    tr.className = "new-row";
    const when = new Date(event.created_at).toISOString().replace("T", " ").slice(0, 19);
    [when, event.actor, event.actor_role, event.action, `${event.target_type} ${event.target_id}`, event.ip_address]
      .forEach((text) => tr.appendChild(cell(text)));
    rows.prepend(tr);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + path);
    socket.onopen = () => { delay = 1000; document.body.dataset.liveAudit = "connected"; };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "audit_event") addRow(data.event);
    };
    socket.onclose = (close) => {
      document.body.dataset.liveAudit = "closed";
      if (close.code === 4403 || close.code === 4404) return;
      // Jittered backoff so that many browsers do not reconnect in step after a restart.
      setTimeout(connect, delay * (0.5 + Math.random()));
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
