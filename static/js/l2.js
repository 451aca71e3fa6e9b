// Sortable tables: <table data-sortable>; each <th> sorts its column by the cells' data-sort
// values (numbers where the header has data-type="number"), ascending then descending. No
// dependency; re-applied after HTMX swaps.
(function () {
  function value(row, index, numeric) {
    var cell = row.children[index];
    var raw = cell ? (cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim()) : "";
    if (!numeric) { return raw.toLowerCase(); }
    var n = parseFloat(raw);
    return isNaN(n) ? null : n;
  }
  function sortBy(table, th) {
    var heads = Array.prototype.slice.call(th.parentNode.children);
    var index = heads.indexOf(th);
    var numeric = th.dataset.type === "number";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, index, numeric), y = value(b, index, numeric);
      if (x === y) { return 0; }
      if (x === null || x === "") { return 1; }  // empty cells last, either way
      if (y === null || y === "") { return -1; }
      return (x < y ? -1 : 1) * (ascending ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function arm(root) {
    (root.querySelectorAll ? root : document).querySelectorAll("table[data-sortable]").forEach(function (table) {
      if (table.dataset.sortArmed) { return; }
      table.dataset.sortArmed = "1";
      table.querySelectorAll("thead th").forEach(function (th) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "th-sort";
        while (th.firstChild) { button.appendChild(th.firstChild); }
        th.appendChild(button);
        button.addEventListener("click", function () { sortBy(table, th); });
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { arm(document); });
  document.addEventListener("htmx:afterSettle", function (evt) { arm(evt.target); });
})();
