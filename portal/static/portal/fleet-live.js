// Keep a page's devices, commands and jobs current from the tenant's fleet socket, without reloading.
//
// Elements opt in by data attributes: `.dot[data-device]` (presence), `[data-command]` rows and
// `[data-job]` rows with `[data-field]` cells. Every event is also re-sent on `document` as a
// `fleet:event` CustomEvent so that a page's own script can react (fetch a new row, for example).
(function () {
  "use strict";
  const script = document.currentScript;
  const path = script.dataset.socket;
  let delay = 1000;
  let connectedBefore = false;

  const JOB_LABELS = {
    running: "Running",
    succeeded: "Succeeded",
    warning: "Completed with warnings",
    failed: "Failed",
    cancelled: "Cancelled",
  };
  const ENDED_COMMANDS = new Set(["succeeded", "failed", "cancelled", "expired"]);
  const COMMAND_LABELS = {
    queued: "Queued",
    delivered: "Delivered",
    acknowledged: "Acknowledged",
    running: "Running",
    succeeded: "Succeeded",
    failed: "Failed",
    cancelled: "Cancelled",
    expired: "Expired",
  };

  function humanBytes(count) {
    // The same units as Django's filesizeformat, so that live and rendered numbers agree.
    const units = ["bytes", "KB", "MB", "GB", "TB", "PB"];
    let value = Number(count) || 0;
    if (value < 1024) return `${value}\u00a0${value === 1 ? "byte" : "bytes"}`;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(1)}\u00a0${units[unit]}`;
  }

  function setField(row, name, text) {
    const cell = row.querySelector(`[data-field="${name}"]`);
    if (cell) cell.textContent = text;
    return cell;
  }

  function setStatus(row, status, labels) {
    row.dataset.status = status;
    const badge = setField(row, "status", labels[status] || status);
    if (badge) badge.className = `badge status-${status}`;
  }

  function presence(event) {
    const live = Boolean(event.live);
    const label = live ? "Online" : "Offline";
    document.querySelectorAll(`.dot[data-device="${Number(event.device)}"]`).forEach((dot) => {
      dot.classList.toggle("live", live);
      dot.dataset.live = live ? "on" : "off";
      dot.title = label;
      dot.setAttribute("aria-label", label);
    });
    document.querySelectorAll(`[data-device-label="${Number(event.device)}"]`).forEach((text) => {
      text.textContent = label;
    });
  }

  function commandStatus(event) {
    document.querySelectorAll(`[data-command="${Number(event.command)}"]`).forEach((row) => {
      // An interim status is sent a moment late (devices.live): never let it undo an end.
      if (ENDED_COMMANDS.has(row.dataset.status) && !ENDED_COMMANDS.has(event.status)) return;
      setStatus(row, event.status, COMMAND_LABELS);
      setField(row, "error", event.error || "");
    });
  }

  function job(event) {
    document.querySelectorAll(`[data-job="${CSS.escape(String(event.job))}"]`).forEach((row) => {
      setStatus(row, event.status, JOB_LABELS);
      const percent = Number(event.percent) || 0;
      const bar = row.querySelector('progress[data-field="progress"]');
      if (bar) bar.value = percent;
      setField(row, "percent", `${percent.toFixed(1)} %`);
      setField(row, "files", `${event.files_done} / ${event.files_total}`);
      setField(row, "bytes", humanBytes(event.bytes_uploaded));
    });
  }

  function refreshAfterReconnect() {
    // Events sent while the socket was down are lost: fetch the tables again from the database.
    if (!window.htmx) return;
    document.querySelectorAll("[data-fleet-refresh-url]").forEach((element) => {
      const url = element.dataset.fleetRefreshUrl || location.pathname + location.search;
      window.htmx.ajax("GET", url, { target: element, swap: "innerHTML" });
    });
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + path);
    socket.onopen = () => {
      delay = 1000;
      document.body.dataset.liveFleet = "connected";
      if (connectedBefore) refreshAfterReconnect();
      connectedBefore = true;
    };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.kind === "device_presence") presence(data);
      else if (data.kind === "command_status") commandStatus(data);
      else if (data.kind === "job") job(data);
      document.dispatchEvent(new CustomEvent("fleet:event", { detail: data }));
    };
    socket.onclose = (close) => {
      document.body.dataset.liveFleet = "closed";
      if (close.code === 4403 || close.code === 4404) return;
      // Jittered backoff so that many browsers do not reconnect in step after a restart.
      setTimeout(connect, delay * (0.5 + Math.random()));
      delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
