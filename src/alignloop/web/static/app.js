// The annotation page's keyboard shortcuts, ranking by drag and by keyboard, and time spent.
// Plain JavaScript, no build step. Model outputs are never inserted as HTML: the server
// renders them escaped, and this file only moves existing elements around.
(function () {
  "use strict";

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  var form = $("#judgment-form");
  if (!form) { return; }
  var item = $("#item");
  var kind = item ? item.getAttribute("data-kind") : "";
  var clientError = $("#client-error");

  function showError(message) {
    if (!clientError) { return; }
    clientError.textContent = message;
    clientError.hidden = !message;
  }

  function check(id) {
    var input = document.getElementById(id);
    if (input) { input.checked = true; input.dispatchEvent(new Event("change", { bubbles: true })); }
  }

  function valid() {
    if (kind === "pair") {
      var choice = $("input[name=choice]:checked", form);
      if (!choice) { showError("Choose A, B, tie or both bad."); return false; }
      if ((choice.value === "a" || choice.value === "b") && !$("input[name=strength]:checked", form)) {
        showError("Say how much better: 1, 2 or 3."); return false;
      }
    }
    return true;
  }

  form.addEventListener("submit", function (event) {
    if (!valid()) { event.preventDefault(); }
  });

  // ---- ranking: drag and drop, arrow buttons, Shift+Up/Down -------------------------------
  var list = $("#ranking-list");
  function syncRanking() {
    if (!list) { return; }
    $("#ranking").value = $all("li", list).map(function (li) { return li.getAttribute("data-response-id"); }).join(",");
  }
  function move(li, delta) {
    if (delta < 0 && li.previousElementSibling) { list.insertBefore(li, li.previousElementSibling); }
    if (delta > 0 && li.nextElementSibling) { list.insertBefore(li.nextElementSibling, li); }
    syncRanking();
    li.focus();
  }
  if (list) {
    var dragged = null;
    $all("li", list).forEach(function (li) {
      li.addEventListener("dragstart", function (event) {
        dragged = li;
        li.classList.add("dragging");
        event.dataTransfer.effectAllowed = "move";
        event.dataTransfer.setData("text/plain", li.getAttribute("data-response-id"));
      });
      li.addEventListener("dragend", function () { li.classList.remove("dragging"); dragged = null; syncRanking(); });
      li.addEventListener("dragover", function (event) {
        event.preventDefault();
        if (!dragged || dragged === li) { return; }
        var box = li.getBoundingClientRect();
        var after = event.clientY > box.top + box.height / 2;
        list.insertBefore(dragged, after ? li.nextElementSibling : li);
      });
      li.addEventListener("drop", function (event) { event.preventDefault(); syncRanking(); });
      $(".up", li).addEventListener("click", function () { move(li, -1); });
      $(".down", li).addEventListener("click", function () { move(li, 1); });
    });
    syncRanking();
  }

  // ---- the key help: an overlay, opened by "?" or its button, closed by Esc, "?", the button or a click outside
  var help = $("#help");
  var helpOpener = null;
  function setHelp(open) {
    if (!help) { return; }
    help.hidden = !open;
    if (open) { helpOpener = document.activeElement; $("#close-help").focus(); }
    else if (helpOpener && helpOpener.focus) { helpOpener.focus(); }
  }
  if (help) {
    $("#show-help").addEventListener("click", function () { setHelp(true); });
    $("#close-help").addEventListener("click", function () { setHelp(false); });
    help.addEventListener("click", function (event) { if (event.target === help) { setHelp(false); } });
  }

  // ---- keyboard ------------------------------------------------------------------------------
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (help && !help.hidden) {
      // While the help is open, keys only close it: nothing is chosen or submitted behind it.
      if (event.key === "Escape" || event.key === "?") { event.preventDefault(); setHelp(false); }
      return;
    }
    var typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type !== "radio"));
    if (typing) {
      if (event.key === "Escape") { target.blur(); }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var key = event.key;
    if (list) {
      var focused = document.activeElement && document.activeElement.parentElement === list ? document.activeElement : null;
      if (key === "ArrowUp" || key === "ArrowDown") {
        event.preventDefault();
        var delta = key === "ArrowUp" ? -1 : 1;
        if (focused && event.shiftKey) { move(focused, delta); return; }
        var items = $all("li", list);
        var index = focused ? items.indexOf(focused) + delta : 0;
        items[Math.max(0, Math.min(items.length - 1, index))].focus();
        return;
      }
    }
    if (kind === "pair") {
      var lower = key.length === 1 ? key.toLowerCase() : key;
      if (lower === "a" || key === "ArrowLeft") { check("choice-a"); event.preventDefault(); return; }
      if (lower === "b" || key === "ArrowRight") { check("choice-b"); event.preventDefault(); return; }
      if (lower === "t") { check("choice-tie"); event.preventDefault(); return; }
      if (lower === "x") { check("choice-both_bad"); event.preventDefault(); return; }
      if (key === "1" || key === "2" || key === "3") { check("strength-" + key); event.preventDefault(); return; }
    }
    if (key === "Enter") {
      if (target && (target.tagName === "BUTTON" || target.tagName === "A" || target.tagName === "SUMMARY")) { return; }
      event.preventDefault();
      if (valid()) { form.requestSubmit(); }
      return;
    }
    if (key === "s" || key === "S") { event.preventDefault(); $("#skip-form").requestSubmit(); return; }
    if (key === "c" || key === "C") { event.preventDefault(); $("#critique").focus(); return; }
    if (key === "?") { event.preventDefault(); setHelp(true); }
  });
})();
