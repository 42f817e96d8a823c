//! Figure builders on the `plotly` crate: every figure gets a title, axis titles and hover values;
//! heatmaps use a diverging red–white–blue scale centred at zero, as the seeds' `imshow` does.

use plotly::common::{
    Anchor, ColorScale, ColorScaleElement, DashType, Line, Marker, Mode, Orientation, Position,
    Title,
};
use plotly::layout::{Annotation, Axis, AxisType, Legend, Margin, Shape, ShapeLine, ShapeType};
use plotly::{Bar, HeatMap, Layout, Plot, Scatter};

use crate::linalg::Matrix;
use crate::run::MetricsRow;

/// Height of a figure in pixels.
const HEIGHT: usize = 420;

/// A value rounded to 4 significant digits, so the page stays small and hover text short.
pub fn round4(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return if x.is_finite() { 0.0 } else { f64::NAN };
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

fn rounded(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| round4(x as f64)).collect()
}

fn axis(title: &str) -> Axis {
    Axis::new().title(Title::with_text(title))
}

fn layout(title: &str, x: &str, y: &str) -> Layout {
    Layout::new()
        .title(Title::with_text(title))
        .x_axis(axis(x))
        .y_axis(axis(y))
        .height(HEIGHT)
        .margin(Margin::new().left(70).right(30).top(60).bottom(60))
}

/// A layout whose legend sits in a row under the plot, so long series names leave the data its width.
fn layout_with_legend(title: &str, x: &str, y: &str) -> Layout {
    layout(title, x, y)
        .height(HEIGHT + 60)
        .legend(
            Legend::new()
                .orientation(Orientation::Horizontal)
                .y(-0.25)
                .y_anchor(Anchor::Top),
        )
        .margin(Margin::new().left(70).right(30).top(60).bottom(110))
}

/// The layout for `n` series: a legend under the plot when there is more than one.
fn series_layout(title: &str, x: &str, y: &str, n: usize) -> Layout {
    if n > 1 {
        layout_with_legend(title, x, y)
    } else {
        layout(title, x, y)
    }
}

/// Plotly's default colour cycle: an overlay gives each run one of these.
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The colour of run `i` in an overlay.
pub fn run_colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A vertical line across a plot, at an epoch.
pub struct VLine {
    /// Text at the top of the line; empty for none.
    pub label: String,
    /// Where.
    pub x: f64,
    /// CSS colour.
    pub colour: &'static str,
    /// Dash pattern.
    pub dash: DashType,
}

/// Vertical dashed lines at the given x values, labelled at the top (phase boundaries).
pub fn with_vlines(plot: &mut Plot, lines: &[(String, f64)]) {
    let lines: Vec<VLine> = lines
        .iter()
        .map(|(label, x)| VLine {
            label: label.clone(),
            x: *x,
            colour: "#555",
            dash: DashType::Dash,
        })
        .collect();
    with_styled_vlines(plot, &lines);
}

/// Vertical lines, each in its own colour and dash (one run's milestones in that run's colour).
pub fn with_styled_vlines(plot: &mut Plot, lines: &[VLine]) {
    let shapes = lines
        .iter()
        .map(|l| {
            Shape::new()
                .shape_type(ShapeType::Line)
                .x_ref("x")
                .y_ref("paper")
                .x0(l.x)
                .x1(l.x)
                .y0(0)
                .y1(1)
                .line(
                    ShapeLine::new()
                        .color(l.colour)
                        .width(1.0)
                        .dash(l.dash.clone()),
                )
        })
        .collect();
    let notes = lines
        .iter()
        .filter(|l| !l.label.is_empty())
        .map(|l| {
            Annotation::new()
                .text(l.label.as_str())
                .x(l.x)
                .x_ref("x")
                .y(1.0)
                .y_ref("paper")
                .show_arrow(false)
                .text_angle(-90.0)
                .x_anchor(Anchor::Right)
                .y_anchor(Anchor::Top)
        })
        .collect();
    let l = plot.layout().clone().shapes(shapes).annotations(notes);
    plot.set_layout(l);
}

/// Loss (log scale) and accuracy against `unit` for the train and test columns of `metrics`, the
/// two series named `names`.
pub fn training_curves(metrics: &[MetricsRow], unit: &str, names: [&str; 2]) -> Vec<Plot> {
    let x: Vec<f64> = metrics.iter().map(|r| r.epoch as f64).collect();
    let col =
        |f: fn(&MetricsRow) -> f64| -> Vec<f32> { metrics.iter().map(|r| f(r) as f32).collect() };
    let [train, test] = names;
    vec![
        lines(
            "Loss",
            unit,
            "cross-entropy loss",
            &x,
            &[(train, col(|r| r.train_loss)), (test, col(|r| r.test_loss))],
            true,
        ),
        lines(
            "Accuracy",
            unit,
            "accuracy",
            &x,
            &[(train, col(|r| r.train_acc)), (test, col(|r| r.test_acc))],
            false,
        ),
    ]
}

/// One or more named series over shared x values; `log_y` puts the y axis on a log scale.
pub fn lines(
    title: &str,
    x_title: &str,
    y_title: &str,
    x: &[f64],
    series: &[(&str, Vec<f32>)],
    log_y: bool,
) -> Plot {
    let mut plot = Plot::new();
    for (name, y) in series {
        plot.add_trace(
            Scatter::new(x.to_vec(), rounded(y))
                .name(*name)
                .mode(Mode::Lines)
                .line(Line::new().width(1.5))
                .hover_template(format!(
                    "{name}<br>{x_title}: %{{x}}<br>{y_title}: %{{y}}<extra></extra>"
                )),
        );
    }
    let mut l = series_layout(title, x_title, y_title, series.len());
    if log_y {
        l = l.y_axis(axis(y_title).type_(AxisType::Log));
    }
    plot.set_layout(l);
    plot
}

/// One line of an overlay: its own x values, the colour of its run, solid or dashed.
pub struct Trace {
    /// Legend entry.
    pub name: String,
    /// x values.
    pub x: Vec<f64>,
    /// y values (NaN draws a gap).
    pub y: Vec<f32>,
    /// Index into [`PALETTE`].
    pub colour: usize,
    /// Dashed (e.g. test curves under solid train curves).
    pub dashed: bool,
}

/// Lines with their own x values and colours, for overlaying runs of different lengths.
pub fn overlay(title: &str, x_title: &str, y_title: &str, traces: &[Trace], log_y: bool) -> Plot {
    let mut plot = Plot::new();
    for t in traces {
        let mut line = Line::new().width(1.5).color(run_colour(t.colour));
        if t.dashed {
            line = line.dash(DashType::Dash);
        }
        plot.add_trace(
            Scatter::new(t.x.clone(), rounded(&t.y))
                .name(t.name.as_str())
                .mode(Mode::Lines)
                .line(line)
                .hover_template(format!(
                    "{}<br>{x_title}: %{{x}}<br>{y_title}: %{{y}}<extra></extra>",
                    t.name
                )),
        );
    }
    let mut l = series_layout(title, x_title, y_title, traces.len());
    if log_y {
        l = l.y_axis(axis(y_title).type_(AxisType::Log));
    }
    plot.set_layout(l);
    plot
}

/// Bars over shared categories, one group member per series, in its run's colour.
pub fn grouped_bars(
    title: &str,
    x_title: &str,
    y_title: &str,
    categories: &[String],
    series: &[(&str, Vec<f32>)],
) -> Plot {
    let mut plot = Plot::new();
    for (i, (name, values)) in series.iter().enumerate() {
        plot.add_trace(
            Bar::new(categories.to_vec(), rounded(values))
                .name(*name)
                .marker(Marker::new().color(run_colour(i)))
                .hover_template(format!("{name}<br>%{{x}}: %{{y}}<extra></extra>")),
        );
    }
    plot.set_layout(
        series_layout(title, x_title, y_title, series.len())
            .bar_mode(plotly::layout::BarMode::Group),
    );
    plot
}

/// A series over named categories (Fourier components, frequencies).
pub fn category_lines(
    title: &str,
    x_title: &str,
    y_title: &str,
    categories: &[String],
    series: &[(&str, Vec<f32>)],
) -> Plot {
    let mut plot = Plot::new();
    for (name, y) in series {
        plot.add_trace(
            Scatter::new(categories.to_vec(), rounded(y))
                .name(*name)
                .mode(Mode::LinesMarkers)
                .marker(Marker::new().size(4))
                .hover_template(format!("{name}<br>%{{x}}: %{{y}}<extra></extra>")),
        );
    }
    plot.set_layout(series_layout(title, x_title, y_title, series.len()));
    plot
}

/// Bars over named categories (cluster sizes).
pub fn bars(
    title: &str,
    x_title: &str,
    y_title: &str,
    categories: &[String],
    values: &[f32],
) -> Plot {
    let mut plot = Plot::new();
    plot.add_trace(
        Bar::new(categories.to_vec(), rounded(values))
            .name(y_title)
            .hover_template(format!("%{{x}}<br>{y_title}: %{{y}}<extra></extra>")),
    );
    plot.set_layout(layout(title, x_title, y_title));
    plot
}

/// A heatmap of `z` (rows along y, columns along x), diverging colours centred at zero. Labels are
/// optional; without them rows and columns are numbered from 0.
pub fn heatmap(
    title: &str,
    x_title: &str,
    y_title: &str,
    z: &Matrix,
    x_labels: Option<&[String]>,
    y_labels: Option<&[String]>,
) -> Plot {
    // Row 0 at the top, as imshow draws it: plotly stacks categories bottom-up, so feed rows reversed.
    let rows: Vec<Vec<f64>> = z
        .data
        .chunks_exact(z.cols.max(1))
        .rev()
        .map(rounded)
        .collect();
    let x: Vec<String> = match x_labels {
        Some(l) => l.to_vec(),
        None => (0..z.cols).map(|i| i.to_string()).collect(),
    };
    let y: Vec<String> = match y_labels {
        Some(l) => l.iter().rev().cloned().collect(),
        None => (0..z.rows).rev().map(|i| i.to_string()).collect(),
    };
    let max = z.data.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let trace = HeatMap::new(x, y, rows)
        .zmid(0.0)
        .zmin(-max)
        .zmax(max)
        .color_scale(diverging())
        .hover_template(format!(
            "{x_title}: %{{x}}<br>{y_title}: %{{y}}<br>value: %{{z}}<extra></extra>"
        ));
    let mut plot = Plot::new();
    plot.add_trace(trace);
    // Categorical axes keep the given order even when labels look like numbers.
    let l = layout(title, x_title, y_title)
        .x_axis(axis(x_title).type_(AxisType::Category))
        .y_axis(axis(y_title).type_(AxisType::Category));
    plot.set_layout(l);
    plot
}

/// Points with text labels (PCA), equal axis scales so a circle looks like one.
pub fn labelled_points(
    title: &str,
    x_title: &str,
    y_title: &str,
    points: &Matrix,
    labels: &[String],
) -> Plot {
    let x: Vec<f64> = (0..points.rows)
        .map(|i| round4(points.at(i, 0) as f64))
        .collect();
    let y: Vec<f64> = (0..points.rows)
        .map(|i| round4(points.data.get(i * points.cols + 1).copied().unwrap_or(0.0) as f64))
        .collect();
    let mut plot = Plot::new();
    plot.add_trace(
        Scatter::new(x, y)
            .mode(Mode::MarkersText)
            .text_array(labels.to_vec())
            .text_position(Position::TopCenter)
            .marker(Marker::new().size(6))
            .hover_template(format!(
                "%{{text}}<br>{x_title}: %{{x}}<br>{y_title}: %{{y}}<extra></extra>"
            )),
    );
    let l = layout(title, x_title, y_title)
        .y_axis(axis(y_title).scale_anchor("x").scale_ratio(1.0))
        .height(560);
    plot.set_layout(l);
    plot
}

/// Plotly express's `RdBu` as the seeds use it: red below zero, white at zero, blue above.
fn diverging() -> ColorScale {
    ColorScale::Vector(
        [
            (0.0, "#67001f"),
            (0.1, "#b2182b"),
            (0.2, "#d6604d"),
            (0.3, "#f4a582"),
            (0.4, "#fddbc7"),
            (0.5, "#f7f7f7"),
            (0.6, "#d1e5f0"),
            (0.7, "#92c5de"),
            (0.8, "#4393c3"),
            (0.9, "#2166ac"),
            (1.0, "#053061"),
        ]
        .iter()
        .map(|(v, c)| ColorScaleElement(*v, c.to_string()))
        .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_keeps_four_significant_digits() {
        assert_eq!(round4(0.123456), 0.1235);
        assert_eq!(round4(-98765.4), -98770.0);
        assert_eq!(round4(0.0), 0.0);
        assert_eq!(round4(2.71828e-7), 2.718e-7);
    }

    #[test]
    fn heatmaps_are_diverging_and_centred() {
        let m = Matrix::new(2, 2, vec![-1.0, 0.5, 0.25, 2.0]).unwrap();
        let json = heatmap("t", "x", "y", &m, None, None).to_json();
        assert!(json.contains("\"zmid\":0.0"), "{json}");
        assert!(json.contains("\"zmin\":-2.0") && json.contains("\"zmax\":2.0"));
        assert!(json.contains("#f7f7f7") && json.contains("hovertemplate"));
    }
}
