// Live progress of maintenance runs: poll each [data-poll] fragment every
// second and swap it in; on the run page ([data-reload]) reload once the run
// has finished, to show its result. Without JavaScript a meta refresh does it.
(function () {
  "use strict";
  var FINAL = { done: true, failed: true };

  function poll(box) {
    var url = box.getAttribute("data-poll");
    var reload = box.hasAttribute("data-reload");
    var busy = false;
    var timer = setInterval(function () {
      if (busy) return;
      busy = true;
      fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.text();
        })
        .then(function (html) {
          var holder = document.createElement("div");
          holder.innerHTML = html.trim();
          var fresh = holder.firstElementChild;
          if (!fresh) return;
          if (reload) fresh.setAttribute("data-reload", "");
          box.replaceWith(fresh);
          box = fresh;
          if (FINAL[fresh.getAttribute("data-state")]) {
            clearInterval(timer);
            if (reload) window.location.reload();
          }
        })
        .catch(function () { /* a missed poll is retried a second later */ })
        .then(function () { busy = false; });
    }, 1000);
  }

  document.querySelectorAll("[data-poll]").forEach(poll);
})();
