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
