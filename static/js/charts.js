// Usage charts of the reports. Each <canvas data-chart="ID"> is drawn from the
// JSON in <script type="application/json" id="ID"> (Django's json_script), so
// no inline script is needed and the Content-Security-Policy can forbid them.
// Data: {title, labels: [...], datasets: [{label, data, axis: "hours"|"jobs", type?}]}.
(function () {
  "use strict";
  const COLOURS = ["#0d6efd", "#fd7e14", "#6c757d", "#198754", "#6f42c1", "#dc3545"];

  function draw(canvas) {
    if (typeof window.Chart === "undefined") return;
    const source = document.getElementById(canvas.getAttribute("data-chart"));
    if (!source) return;
    let spec;
    try {
      spec = JSON.parse(source.textContent);
    } catch (e) {
      return;
    }
    const datasets = (spec.datasets || []).map(function (d, i) {
      const colour = COLOURS[i % COLOURS.length];
      return {
        label: d.label,
        data: d.data,
        type: d.type || "bar",
        yAxisID: d.axis === "jobs" ? "jobs" : "hours",
        backgroundColor: d.type === "line" ? colour : colour + "cc",
        borderColor: colour,
        borderWidth: d.type === "line" ? 2 : 0,
        pointRadius: (spec.labels || []).length > 60 ? 0 : 2,
        tension: 0,
        order: d.type === "line" ? 0 : 1,
      };
    });
    const hasJobs = datasets.some(function (d) { return d.yAxisID === "jobs"; });
    const scales = {
      x: { ticks: { autoSkip: true, maxRotation: 0 } },
      hours: { type: "linear", position: "left", beginAtZero: true, title: { display: true, text: "hours" } },
    };
    if (hasJobs) {
      scales.jobs = {
        type: "linear", position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
        title: { display: true, text: "jobs" }, ticks: { precision: 0 },
      };
    }
    new window.Chart(canvas, {
      type: "bar",
      data: { labels: spec.labels || [], datasets: datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: scales,
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  function init() {
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
