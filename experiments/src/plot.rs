//! Small SVG charts for the ablation report — line charts, grouped bar charts and heatmaps —
//! and a figure that lays several of them out on a grid. Written by hand (≈ 300 lines) so a
//! reader can see every coordinate transform; any browser or Markdown viewer shows the files.

use std::fmt::Write;
use std::path::Path;

/// The categorical colours of series (Tableau 10).
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// Anchors of the sequential colour map of heatmaps (viridis, low → high).
const VIRIDIS: [(f64, f64, f64); 5] = [
    (68.0, 1.0, 84.0),
    (59.0, 82.0, 139.0),
    (33.0, 145.0, 140.0),
    (94.0, 201.0, 98.0),
    (253.0, 231.0, 37.0),
];

/// The colour of `series` number `index`.
pub fn series_colour(index: usize) -> &'static str {
    PALETTE[index % PALETTE.len()]
}

fn viridis(fraction: f64) -> String {
    let f = fraction.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let i = (f.floor() as usize).min(VIRIDIS.len() - 2);
    let (a, b, t) = (VIRIDIS[i], VIRIDIS[i + 1], f - i as f64);
    let mix = |x: f64, y: f64| (x + (y - x) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn text(svg: &mut String, x: f64, y: f64, size: f64, anchor: &str, content: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}">{}</text>"#,
        escape(content)
    );
}

/// Short tick labels: 0.25, 1.5k, 3e-4.
fn tick_label(value: f64) -> String {
    let magnitude = value.abs();
    if value == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e5).contains(&magnitude) {
        format!("{value:.0e}")
    } else if magnitude >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else {
        let text = format!("{value:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// About five round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10ⁿ).
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let exponent = raw.log10().floor() as i32;
    let power = 10f64.powi(exponent);
    let multiple = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * power >= raw)
        .unwrap_or(10.0);
    let step = multiple * power;
    // i·multiple is an exact integer; scaling it by 10ⁿ once keeps 0.6 from becoming 0.6000…1.
    let at = |i: i64| {
        let units = i as f64 * multiple;
        if exponent < 0 {
            units / 10f64.powi(-exponent)
        } else {
            units * power
        }
    };
    ((lo / step).ceil() as i64..=(hi / step).floor() as i64)
        .map(at)
        .collect()
}

/// Something that draws itself into the rectangle (x, y, w, h) of a figure.
pub trait Panel {
    fn draw(&self, svg: &mut String, x: f64, y: f64, w: f64, h: f64);
}

/// A named sequence of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Palette index: give a variant the same index in every figure.
    pub colour: usize,
}

/// A named set of bars, one value per category.
#[derive(Debug, Clone)]
pub struct Bars {
    pub name: String,
    pub values: Vec<f64>,
    pub colour: usize,
}

/// Lines (with dots when `markers`) over shared x and y axes, with a legend.
#[derive(Debug, Clone, Default)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic y axis (non-positive values are left out).
    pub log_y: bool,
    pub markers: bool,
}

/// Margins of a chart's plotting area: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (58.0, 120.0, 28.0, 42.0);

/// The frame, title, axis labels and ticks of a chart; returns the map from data to pixels.
struct Axes {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x_range: (f64, f64),
    y_range: (f64, f64),
    log_y: bool,
}

impl Axes {
    fn x(&self, value: f64) -> f64 {
        let (lo, hi) = self.x_range;
        self.left + (value - lo) / (hi - lo).max(1e-12) * self.width
    }
    fn y(&self, value: f64) -> f64 {
        let (lo, hi) = self.y_range;
        let fraction = if self.log_y {
            (value.log10() - lo) / (hi - lo).max(1e-12)
        } else {
            (value - lo) / (hi - lo).max(1e-12)
        };
        self.top + self.height * (1.0 - fraction)
    }

    #[allow(clippy::too_many_arguments)]
    fn draw(
        svg: &mut String,
        (x, y, w, h): (f64, f64, f64, f64),
        title: &str,
        x_label: &str,
        y_label: &str,
        x_range: (f64, f64),
        y_range: (f64, f64),
        log_y: bool,
    ) -> Axes {
        let axes = Axes {
            left: x + MARGIN.0,
            top: y + MARGIN.2,
            width: w - MARGIN.0 - MARGIN.1,
            height: h - MARGIN.2 - MARGIN.3,
            x_range,
            y_range: if log_y {
                (y_range.0.log10(), y_range.1.log10())
            } else {
                y_range
            },
            log_y,
        };
        text(svg, x + w / 2.0, y + 16.0, 13.0, "middle", title);
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>"##,
            axes.left, axes.top, axes.width, axes.height
        );
        for tick in ticks(x_range.0, x_range.1) {
            let px = axes.x(tick);
            let bottom = axes.top + axes.height;
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{bottom:.1}" x2="{px:.1}" y2="{:.1}" stroke="#888"/>"##,
                bottom + 4.0
            );
            text(svg, px, bottom + 15.0, 10.0, "middle", &tick_label(tick));
        }
        let y_ticks: Vec<f64> = if log_y {
            let (lo, hi) = axes.y_range;
            let decades: Vec<f64> = (lo.floor() as i32..=hi.ceil() as i32)
                .flat_map(|p| [1.0, 2.0, 3.0, 5.0].map(|m| m * 10f64.powi(p)))
                .filter(|v| (lo..=hi).contains(&v.log10()))
                .collect();
            decades
        } else {
            ticks(y_range.0, y_range.1)
        };
        for tick in y_ticks {
            let py = axes.y(tick);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/>"##,
                axes.left,
                axes.left + axes.width
            );
            text(
                svg,
                axes.left - 5.0,
                py + 3.5,
                10.0,
                "end",
                &tick_label(tick),
            );
        }
        text(
            svg,
            axes.left + axes.width / 2.0,
            y + h - 8.0,
            11.0,
            "middle",
            x_label,
        );
        let (lx, ly) = (x + 13.0, axes.top + axes.height / 2.0);
        let _ = writeln!(
            svg,
            r#"<text x="{lx:.1}" y="{ly:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
            escape(y_label)
        );
        axes
    }

    /// A legend to the right of the plotting area: (name, palette index) per entry.
    fn legend<'a>(&self, svg: &mut String, entries: impl Iterator<Item = (&'a str, usize)>) {
        for (i, (name, colour)) in entries.enumerate() {
            let (lx, ly) = (
                self.left + self.width + 10.0,
                self.top + 6.0 + 15.0 * i as f64,
            );
            let _ = writeln!(
                svg,
                r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}"/>"#,
                ly - 8.0,
                series_colour(colour)
            );
            text(svg, lx + 14.0, ly + 1.0, 10.0, "start", name);
        }
    }
}

/// The smallest and largest of `values`, widened when they coincide.
fn extent(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 0.5 * lo.abs().max(1e-3), hi + 0.5 * hi.abs().max(1e-3))
    } else {
        (lo, hi)
    }
}

impl Panel for LineChart {
    fn draw(&self, svg: &mut String, x: f64, y: f64, w: f64, h: f64) {
        let usable = |v: f64| v.is_finite() && (!self.log_y || v > 0.0);
        let points = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter().filter(|p| usable(p.1)))
        };
        let x_range = extent(points().map(|p| p.0));
        let (lo, hi) = extent(points().map(|p| p.1));
        let y_range = if self.log_y {
            (lo, hi)
        } else {
            let pad = 0.05 * (hi - lo);
            (lo - pad, hi + pad)
        };
        let axes = Axes::draw(
            svg,
            (x, y, w, h),
            &self.title,
            &self.x_label,
            &self.y_label,
            x_range,
            y_range,
            self.log_y,
        );
        for series in &self.series {
            let colour = series_colour(series.colour);
            let path: Vec<String> = series
                .points
                .iter()
                .filter(|p| usable(p.1))
                .map(|&(px, py)| format!("{:.1},{:.1}", axes.x(px), axes.y(py)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                path.join(" ")
            );
            if self.markers {
                for &(px, py) in series.points.iter().filter(|p| usable(p.1)) {
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                        axes.x(px),
                        axes.y(py)
                    );
                }
            }
        }
        axes.legend(svg, self.series.iter().map(|s| (s.name.as_str(), s.colour)));
    }
}

/// Bars for each category, one bar per series side by side.
#[derive(Debug, Clone, Default)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<Bars>,
}

impl Panel for BarChart {
    fn draw(&self, svg: &mut String, x: f64, y: f64, w: f64, h: f64) {
        let top = extent(self.series.iter().flat_map(|s| s.values.iter().copied())).1;
        let n = self.categories.len().max(1) as f64;
        let axes = Axes::draw(
            svg,
            (x, y, w, h),
            &self.title,
            &self.x_label,
            &self.y_label,
            (-0.5, n - 0.5),
            (0.0, top.max(1e-12) * 1.05),
            false,
        );
        let slot = axes.width / n;
        let bar = 0.8 * slot / self.series.len().max(1) as f64;
        for (s, bars) in self.series.iter().enumerate() {
            for (c, &value) in bars.values.iter().enumerate() {
                let left = axes.left + slot * (c as f64 + 0.1) + bar * s as f64;
                let height = axes.y(0.0) - axes.y(value.max(0.0));
                let _ = writeln!(
                    svg,
                    r#"<rect x="{left:.1}" y="{:.1}" width="{bar:.1}" height="{height:.1}" fill="{}"/>"#,
                    axes.y(value.max(0.0)),
                    series_colour(bars.colour)
                );
            }
        }
        // Category names replace the numeric ticks' meaning: write them under each slot.
        for (c, name) in self.categories.iter().enumerate() {
            let px = axes.left + slot * (c as f64 + 0.5);
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="14" fill="white"/>"##,
                px - slot / 2.0 + 1.0,
                axes.top + axes.height + 5.0,
                slot - 2.0
            );
            text(svg, px, axes.top + axes.height + 15.0, 10.0, "middle", name);
        }
        axes.legend(svg, self.series.iter().map(|s| (s.name.as_str(), s.colour)));
    }
}

/// A grid of coloured cells (`values[row][column]`) with a colour scale.
#[derive(Debug, Clone, Default)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Labels of the rows and columns; empty to leave them off (e.g. position grids).
    pub row_labels: Vec<String>,
    pub column_labels: Vec<String>,
    pub values: Vec<Vec<f64>>,
    /// The values mapped to the ends of the colour scale (default: the data's extent).
    pub range: Option<(f64, f64)>,
}

impl Panel for Heatmap {
    fn draw(&self, svg: &mut String, x: f64, y: f64, w: f64, h: f64) {
        let rows = self.values.len().max(1);
        let columns = self.values.first().map_or(1, Vec::len).max(1);
        let (lo, hi) = self
            .range
            .unwrap_or_else(|| extent(self.values.iter().flatten().copied()));
        let (left, top) = (x + 52.0, y + 24.0);
        let (width, height) = (w - 52.0 - 56.0, h - 24.0 - 34.0);
        let (mut cell_w, mut cell_h) = (width / columns as f64, height / rows as f64);
        if self.row_labels.is_empty() && self.column_labels.is_empty() {
            // An unlabelled grid is a picture (e.g. patch positions): square cells.
            cell_w = cell_w.min(cell_h);
            cell_h = cell_w;
        }
        let (width, height) = (cell_w * columns as f64, cell_h * rows as f64);
        text(svg, x + w / 2.0, y + 15.0, 12.0, "middle", &self.title);
        for (r, row) in self.values.iter().enumerate() {
            for (c, &value) in row.iter().enumerate() {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.2}" height="{:.2}" fill="{}"><title>{}</title></rect>"#,
                    left + c as f64 * cell_w,
                    top + r as f64 * cell_h,
                    cell_w + 0.3,
                    cell_h + 0.3,
                    viridis((value - lo) / (hi - lo).max(1e-12)),
                    tick_label(value)
                );
            }
        }
        for (r, label) in self.row_labels.iter().enumerate() {
            let py = top + (r as f64 + 0.5) * cell_h + 3.5;
            text(svg, left - 4.0, py, 9.0, "end", label);
        }
        for (c, label) in self.column_labels.iter().enumerate() {
            let px = left + (c as f64 + 0.5) * cell_w;
            text(svg, px, top + height + 12.0, 9.0, "middle", label);
        }
        text(
            svg,
            left + width / 2.0,
            y + h - 6.0,
            10.0,
            "middle",
            &self.x_label,
        );
        let (lx, ly) = (x + 10.0, top + height / 2.0);
        let _ = writeln!(
            svg,
            r#"<text x="{lx:.1}" y="{ly:.1}" font-size="10" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
            escape(&self.y_label)
        );
        // The colour scale: a vertical bar with its two end values.
        let bar_x = left + width + 10.0;
        for i in 0..20 {
            let _ = writeln!(
                svg,
                r#"<rect x="{bar_x:.1}" y="{:.1}" width="10" height="{:.2}" fill="{}"/>"#,
                top + height * i as f64 / 20.0,
                height / 20.0 + 0.3,
                viridis(1.0 - i as f64 / 20.0)
            );
        }
        text(svg, bar_x + 12.0, top + 8.0, 9.0, "start", &tick_label(hi));
        text(
            svg,
            bar_x + 12.0,
            top + height,
            9.0,
            "start",
            &tick_label(lo),
        );
    }
}

/// An SVG document with `panels` laid out `columns` to a row, each `panel_size` pixels.
pub fn figure(panels: &[&dyn Panel], columns: usize, panel_size: (f64, f64)) -> String {
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let (w, h) = (panel_size.0 * columns as f64, panel_size.1 * rows as f64);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif">"#
    );
    svg += "\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    for (i, panel) in panels.iter().enumerate() {
        let (x, y) = (
            (i % columns) as f64 * panel_size.0,
            (i / columns) as f64 * panel_size.1,
        );
        panel.draw(&mut svg, x, y, panel_size.0, panel_size.1);
    }
    svg + "</svg>\n"
}

/// Writes [`figure`] to `path` (atomically, see `ditmoe_nn::files`).
pub fn write_figure(
    path: &Path,
    panels: &[&dyn Panel],
    columns: usize,
    panel_size: (f64, f64),
) -> std::io::Result<()> {
    ditmoe_nn::files::write_atomically(path, figure(panels, columns, panel_size).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(ticks(3.0, 27.0), vec![5.0, 10.0, 15.0, 20.0, 25.0]);
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(2000.0), "2000");
        assert_eq!(tick_label(0.0002), "2e-4");
    }

    #[test]
    fn a_figure_is_well_formed_svg_with_every_series() {
        let chart = LineChart {
            title: "loss <train>".into(),
            series: vec![
                Series {
                    name: "a".into(),
                    points: vec![(0.0, 1.0), (1.0, 0.5)],
                    colour: 0,
                },
                Series {
                    name: "b".into(),
                    points: vec![(0.0, 2.0), (1.0, 0.0)],
                    colour: 3,
                },
            ],
            log_y: true,
            ..Default::default()
        };
        let map = Heatmap {
            values: vec![vec![0.0, 1.0], vec![0.5, 0.25]],
            ..Default::default()
        };
        let svg = figure(&[&chart, &map], 2, (400.0, 300.0));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("loss &lt;train&gt;"), "titles are escaped");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(
            svg.contains(&format!("stroke=\"{}\"", series_colour(3))),
            "explicit colours"
        );
        assert_eq!(svg.matches("<title>").count(), 4, "one cell per value");
        // The viridis ends.
        assert!(svg.contains("#440154") && svg.contains("#fde725"));
    }
}
