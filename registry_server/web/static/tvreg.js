// Progressive enhancement only: every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("div.cmd > code").forEach(function (code) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy the command");
    button.addEventListener("click", function () {
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(code.textContent).then(done, function () { select(code); });
      } else {
        select(code);
      }
    });
    code.parentNode.appendChild(button);
  });
  var form = document.getElementById("pick-form");
  if (form) {
    var boxes = form.querySelectorAll("input[name=pick]");
    var limit = 8;
    var update = function () {
      var picked = form.querySelectorAll("input[name=pick]:checked").length;
      boxes.forEach(function (b) { if (!b.checked && b.dataset.nosketch !== "1") { b.disabled = picked >= limit; } });
    };
    boxes.forEach(function (b) { if (b.disabled) { b.dataset.nosketch = "1"; } b.addEventListener("change", update); });
    update();
  }
});
function select(node) {
  var range = document.createRange();
  range.selectNodeContents(node);
  var sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}
