// The events page keeps itself current: every few seconds it fetches itself again (same
// query, same session) and swaps in the new list. A file, not inline: the page's CSP allows
// scripts from this origin only.
"use strict";
(function () {
  var list = document.getElementById("events");
  if (!list) {
    return;
  }
  var every = Number(list.getAttribute("data-every")) * 1000;
  function refresh() {
    if (document.hidden) {
      return;
    }
    fetch(window.location.href, {headers: {"Accept": "text/html"}, cache: "no-store",
                                 credentials: "same-origin"})
      .then(function (answer) { return answer.ok ? answer.text() : ""; })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("events");
        if (fresh) {
          list.replaceWith(fresh);
          list = fresh;
        }
      })
      .catch(function () {});  // offline for a moment: the next round tries again
  }
  window.setInterval(refresh, every);
})();
