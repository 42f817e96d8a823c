//! The HTML page: plotly.js embedded once (from the `plotly` crate's `plotly_embed_js` copy), then each
//! section's text and figures. A small script records script errors and, once every figure has
//! drawn, writes `data-figures`, `data-rendered` and `data-errors` on `<body>` so a headless browser
//! (and the tests) can tell that the page works.

use plotly::Plot;

/// A section of the report: a heading, a paragraph, figures and optional pre-formatted text.
pub struct Section {
    /// Anchor id.
    pub id: &'static str,
    /// Heading.
    pub title: &'static str,
    /// Explanatory paragraph (HTML allowed).
    pub intro: String,
    /// Figures, in order.
    pub figures: Vec<Plot>,
}

/// The plotly.js bundle as one `<script>` tag (the crate's offline sources minus MathJax, which the
/// report does not use).
fn plotly_script() -> String {
    let sources = Plot::offline_js_sources();
    match sources.find("</script>") {
        Some(end) => sources[..end + "</script>".len()].to_string(),
        None => sources,
    }
}

/// Escapes text for HTML element content.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The summary table at the top of a page: one `(name, value)` row each, escaped.
pub fn summary_table(rows: &[(String, String)]) -> String {
    let cells: String = rows
        .iter()
        .map(|(k, v)| format!("<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(v)))
        .collect();
    format!("<table class=\"summary\">{cells}</table>")
}

/// The whole page.
pub fn render(title: &str, summary_html: &str, sections: &[Section]) -> String {
    let mut body = String::new();
    let mut n = 0;
    body.push_str("<nav>");
    for s in sections {
        body.push_str(&format!("<a href=\"#{}\">{}</a>", s.id, s.title));
    }
    body.push_str("</nav>\n");
    for s in sections {
        body.push_str(&format!(
            "<section id=\"{}\">\n<h2>{}</h2>\n<p>{}</p>\n<div class=\"grid\">\n",
            s.id, s.title, s.intro
        ));
        for plot in &s.figures {
            let json = plot.to_json().replace("</", "<\\/");
            body.push_str(&format!(
                "<div class=\"fig\"><div id=\"fig{n}\" class=\"plot\"></div></div>\n\
                 <script>groklensPlot(\"fig{n}\", {json});</script>\n"
            ));
            n += 1;
        }
        body.push_str("</div>\n</section>\n");
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1500px; padding: 0 24px 48px; color: #222; }}
h1 {{ margin-bottom: 4px; }}
nav {{ position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid #ddd; z-index: 10; }}
nav a {{ margin-right: 18px; color: #2166ac; text-decoration: none; font-weight: 600; }}
table.summary td {{ padding: 2px 14px 2px 0; vertical-align: top; }}
table.summary td:first-child {{ color: #555; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(600px, 1fr)); gap: 12px; }}
.fig {{ border: 1px solid #eee; border-radius: 4px; min-width: 0; overflow: hidden; }}
.plot {{ width: 100%; }}
section p {{ max-width: 1100px; line-height: 1.45; }}
</style>
<script>
window.groklensErrors = [];
window.addEventListener("error", function (e) {{
  var t = e.target;
  window.groklensErrors.push(t && t !== window ? "failed to load " + (t.src || t.href) : String(e.message));
}}, true);
(function () {{
  var original = console.error;
  console.error = function () {{
    window.groklensErrors.push(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  }};
}})();
// Figures are queued while the page parses and drawn once the layout is final, so each one takes
// its grid cell's width.
window.groklensQueue = [];
function groklensPlot(id, figure) {{
  figure.config = Object.assign({{responsive: true, displaylogo: false}}, figure.config || {{}});
  window.groklensQueue.push([id, figure]);
}}
</script>
{plotly}
</head>
<body>
<h1>{title}</h1>
{summary_html}
{body}
<script>
var drawn = window.groklensQueue.map(function (q) {{ return Plotly.newPlot(q[0], q[1]); }});
Promise.all(drawn).then(function () {{
  var figures = document.querySelectorAll(".plot");
  var rendered = Array.prototype.filter.call(figures, function (f) {{
    return f.querySelector(".main-svg") !== null;
  }}).length;
  document.body.dataset.figures = figures.length;
  document.body.dataset.rendered = rendered;
  document.body.dataset.errors = window.groklensErrors.length;
  document.body.dataset.errorText = window.groklensErrors.join(" | ");
}}, function (e) {{
  window.groklensErrors.push(String(e));
  document.body.dataset.errors = window.groklensErrors.length;
  document.body.dataset.errorText = window.groklensErrors.join(" | ");
}});
</script>
</body>
</html>
"#,
        plotly = plotly_script(),
    )
}
