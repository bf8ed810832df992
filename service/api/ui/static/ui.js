// Live job progress: every job shown with data-live is polled once a second until it ends.
// Everything else in the UI works without this script.
(function () {
  "use strict";
  var TERMINAL = ["succeeded", "failed", "cancelled"];

  function update(box, job) {
    var status = box.querySelector(".job-status");
    status.textContent = job.status;
    status.className = "status status-" + job.status + " job-status";
    box.querySelector(".job-progress").value = job.progress;
    box.querySelector(".job-percent").textContent = Math.round(job.progress * 100) + "%";
    box.querySelector(".job-step").textContent = job.step;
    var error = box.querySelector(".job-error");
    error.textContent = job.error || "";
    error.hidden = !job.error;
    if (TERMINAL.indexOf(job.status) >= 0) {
      box.removeAttribute("data-live");
      var cancel = box.querySelector(".job-cancel");
      if (cancel) cancel.remove();
      if (job.result_version !== null) {
        var result = box.querySelector(".job-result");
        var model = box.getAttribute("data-model-id");
        result.textContent = "";
        var link = document.createElement("a");
        link.href = "/ui/models/" + encodeURIComponent(model) + "/versions/" + job.result_version;
        link.textContent = "New version v" + job.result_version;
        result.appendChild(link);
        result.hidden = false;
      }
    }
  }

  function poll() {
    var boxes = document.querySelectorAll("[data-job-id][data-live]");
    if (!boxes.length) return;
    var query = Array.prototype.map.call(boxes, function (box) {
      return "id=" + encodeURIComponent(box.getAttribute("data-job-id"));
    }).join("&");
    fetch("/ui/jobs/progress?" + query, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : { data: [] }; })
      .then(function (body) {
        body.data.forEach(function (job) {
          var box = document.querySelector('[data-job-id="' + job.id + '"]');
          if (box) update(box, job);
        });
      })
      .catch(function () { /* a missed poll is retried next second */ })
      .then(function () { setTimeout(poll, 1000); });
  }

  document.addEventListener("DOMContentLoaded", function () { setTimeout(poll, 1000); });
})();
