// Small page behaviours; no inline scripts, so the Content-Security-Policy
// can forbid them.
document.addEventListener("submit", function (event) {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
}, true);

document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const target = document.getElementById(button.getAttribute("data-copy"));
  if (target && navigator.clipboard) {
    navigator.clipboard.writeText(target.value || target.textContent);
    button.textContent = "Copied";
  }
});

// Job composer: load the chosen template's form (a plain GET, so neither the
// CSRF token nor the script ends up in the URL).
document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-template-use]");
  if (!button) return;
  const select = document.getElementById(button.getAttribute("data-template-select"));
  const url = new URL(button.getAttribute("data-template-use"), window.location.href);
  const project = document.getElementById("id_project");
  if (select && select.value) url.searchParams.set("template", select.value);
  if (project && project.value) url.searchParams.set("project", project.value);
  window.location.assign(url.toString());
});
