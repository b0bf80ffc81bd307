"""Static parts of the report page: style sheet and the two small scripts.

Kept as Python strings rather than package-data files so that the report works from any
install (wheel, editable, zipapp) without a ``package-data`` entry to keep in sync.
"""

CSS = """
:root { --fg: #1d2330; --muted: #5c6577; --line: #dfe3ea; --bg: #ffffff; --band: #f5f7fa;
        --good: #16794a; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { padding: 20px 28px 12px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: var(--muted); }
nav { padding: 8px 28px; border-bottom: 1px solid var(--line); background: var(--band);
      font-size: 13px; }
nav a { margin-right: 14px; color: #2457c5; text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { margin-top: 22px; }
h2 { font-size: 17px; margin: 0 0 6px; }
p.note { margin: 2px 0 8px; color: var(--muted); font-size: 12.5px; }
.plot { width: 100%; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 4px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right;
         vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
thead th { background: var(--band); position: sticky; top: 0; }
tr.group th { text-align: left; background: #fff; color: var(--muted); font-weight: 600;
              padding-top: 12px; }
td.best { font-weight: 700; }
.delta { display: block; font-size: 11.5px; color: var(--muted); }
.delta.good { color: var(--good); }
.delta.bad { color: var(--bad); }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
#wattspan-errors { margin: 10px 28px; padding: 8px 12px; border: 1px solid var(--bad);
                   color: var(--bad); border-radius: 6px; white-space: pre-wrap; }
@media print { nav { display: none; } .plot { break-inside: avoid; } }
"""

# Runs before plotly.js loads. It records every uncaught error, rejected promise and
# console.error on <html data-wattspan-errors> (and in a visible banner), so that a reader
# sees a broken plot is broken and a headless browser test can read the verdict back with
# --dump-dom.
ERROR_RECORDER_JS = """
(function () {
  var errors = [];
  function show() {
    var b = document.getElementById('wattspan-errors');
    if (b && errors.length) { b.hidden = false; b.textContent = 'JavaScript errors:\\n' +
      errors.join('\\n'); }
  }
  function record(msg) {
    errors.push(String(msg));
    document.documentElement.setAttribute('data-wattspan-errors', JSON.stringify(errors));
    if (document.title.indexOf('[error] ') !== 0) { document.title = '[error] ' +
      document.title; }
    show();
  }
  window.addEventListener('error', function (e) {
    record(e.message || (e.target && e.target.src ? 'failed to load ' + e.target.src : e));
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    var r = e.reason; record('unhandled rejection: ' + (r && r.message ? r.message : r));
  });
  var consoleError = console.error;
  console.error = function () {
    record(Array.prototype.join.call(arguments, ' '));
    return consoleError.apply(console, arguments);
  };
  document.addEventListener('DOMContentLoaded', show);
  window.wattspanRecordError = record;
})();
"""

# Draws every figure from the JSON block; marks <html data-wattspan-rendered=N> when all
# N plots are drawn.
RENDER_JS = """
(function () {
  var record = window.wattspanRecordError;
  if (typeof Plotly === 'undefined') { record('plotly.js is missing'); return; }
  var figs = JSON.parse(document.getElementById('wattspan-figures').textContent);
  var config = { responsive: true, displaylogo: false,
                 toImageButtonOptions: { format: 'svg' } };
  Promise.all(figs.map(function (f) {
    return Plotly.newPlot(f.id, f.data, f.layout, config);
  })).then(function () {
    document.documentElement.setAttribute('data-wattspan-rendered', String(figs.length));
  }).catch(function (e) { record(e && e.message ? e.message : e); });
})();
"""
