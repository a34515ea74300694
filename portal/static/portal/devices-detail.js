// The device page: fetch the jobs or commands table again when the fleet socket (fleet-live.js)
// tells of a row the page does not show yet, and load job logs and command results when opened.
(function () {
  "use strict";
  const device = Number(document.currentScript.dataset.device);
  const FINISHED_COMMANDS = new Set(["succeeded", "failed", "cancelled", "expired"]);
  const refreshing = {};

  function load(details) {
    details.dataset.loaded = "yes";
    const body = details.querySelector(".lazy-body");
    window.htmx.ajax("GET", details.dataset.lazyUrl, { target: body, swap: "innerHTML" });
  }

  // `toggle` does not bubble: listen in the capture phase to see every <details> of the page.
  document.addEventListener(
    "toggle",
    (event) => {
      const details = event.target;
      if (details.tagName === "DETAILS" && details.open && details.dataset.lazyUrl && details.dataset.loaded !== "yes") {
        load(details);
      }
    },
    true,
  );

  function refresh(id) {
    // One request at a time per table; events that arrive meanwhile ask for one more afterwards.
    const state = refreshing[id] || (refreshing[id] = { busy: false, again: false });
    if (state.busy) {
      state.again = true;
      return;
    }
    state.busy = true;
    setTimeout(() => {
      const element = document.getElementById(id);
      const open = Array.from(element.querySelectorAll("details[open][data-lazy-url]"), (details) => details.dataset.lazyUrl);
      const done = () => {
        open.forEach((url) => {
          const details = element.querySelector(`details[data-lazy-url="${CSS.escape(url)}"]`);
          if (details) details.open = true;
        });
        state.busy = false;
        if (state.again) {
          state.again = false;
          refresh(id);
        }
      };
      window.htmx
        .ajax("GET", element.dataset.fleetRefreshUrl, { target: element, swap: "innerHTML" })
        .then(done, done);
    }, 150);
  }

  document.addEventListener("fleet:event", (message) => {
    const event = message.detail;
    if (Number(event.device) !== device) return;
    if (event.kind === "job") {
      const row = document.querySelector(`[data-job="${CSS.escape(String(event.job))}"]`);
      // A new job, or one that ended (its log and final counters are stored now).
      if (!row || event.status !== "running") refresh("device-jobs");
    } else if (event.kind === "command_status") {
      const row = document.querySelector(`[data-command="${Number(event.command)}"]`);
      if (!row) {
        refresh("device-commands");
      } else if (FINISHED_COMMANDS.has(event.status)) {
        row.querySelectorAll("details[data-lazy-url]").forEach((details) => {
          delete details.dataset.loaded;
          if (details.open) load(details);
        });
      }
    }
  });
})();
