// Small behaviours every page shares. The pages work without JavaScript;
// this only adds conveniences.
(function () {
  "use strict";

  // Copy buttons: <button data-copy="text">. The clipboard API needs a
  // secure context (https or localhost); elsewhere a hidden textarea and
  // execCommand do the same.
  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }
  function copied(button, ok) {
    var title = button.getAttribute("title");
    button.classList.add(ok ? "copied" : "failed");
    button.setAttribute("title", ok ? "Copied" : "Copy failed: select the text instead");
    setTimeout(function () {
      button.classList.remove("copied", "failed");
      button.setAttribute("title", title);
    }, 1500);
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
    if (!button) return;
    var text = button.getAttribute("data-copy");
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { copied(button, true); },
        function () { copied(button, fallback(text)); }
      );
    } else {
      copied(button, fallback(text));
    }
  });

})();
