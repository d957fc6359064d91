//! SVG line plots for the report (plotters, SVG backend only): one or more
//! named series of (x, y) points on labelled axes, linear or logarithmic.

use super::report::{format_number, Plot, Section};
use plotters::prelude::*;
use std::path::Path;

/// Draws `series` into `dir/file` ([`lines`]) and adds the plot to `s`, or
/// a note saying why it was not drawn.
pub fn add(
    s: &mut Section,
    dir: &Path,
    file: &str,
    title: &str,
    x: Axis,
    y: Axis,
    series: &[Series],
) {
    let (x_label, y_label) = (x.label.to_string(), y.label.to_string());
    match lines(&dir.join(file), title, x, y, series) {
        Ok(()) => s.plots.push(Plot {
            title: title.into(),
            file: file.into(),
            x_label,
            y_label,
        }),
        Err(e) => s.notes.push(format!("plot {file} not drawn: {e}")),
    }
}

/// A named series of points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// An axis: its label and whether it is logarithmic.
pub struct Axis<'a> {
    pub label: &'a str,
    pub log: bool,
}

/// The span of an axis over `values`, padded, positive if `log`.
fn span(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.05).max(1e-9);
        ((lo - pad).min(0.0_f64.max(lo - pad)), hi + pad)
    }
}

/// Draws `series` to the SVG file `path`. Points that are not finite (or
/// not positive on a log axis) are left out; a series left with no point
/// is not drawn.
pub fn lines(path: &Path, title: &str, x: Axis, y: Axis, series: &[Series]) -> Result<(), String> {
    let keep = |&(a, b): &(f64, f64)| {
        a.is_finite() && b.is_finite() && (!x.log || a > 0.0) && (!y.log || b > 0.0)
    };
    let series: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.points.iter().copied().filter(keep).collect(),
            )
        })
        .filter(|(_, p): &(&str, Vec<(f64, f64)>)| !p.is_empty())
        .collect();
    let xs = span(series.iter().flat_map(|s| s.1.iter().map(|p| p.0)), x.log);
    let ys = span(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)), y.log);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| format!("drawing {title}: {e}");
        root.fill(&WHITE).map_err(e)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72);
        // The four combinations of scales are four chart types.
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart.map_err(e)?;
                chart
                    .configure_mesh()
                    .x_desc(x.label)
                    .y_desc(y.label)
                    .x_label_formatter(&|v| format_number(*v))
                    .y_label_formatter(&|v| format_number(*v))
                    .draw()
                    .map_err(e)?;
                for (i, (name, points)) in series.iter().enumerate() {
                    let color = Palette99::pick(i).to_rgba();
                    chart
                        .draw_series(LineSeries::new(
                            points.iter().copied(),
                            color.stroke_width(2),
                        ))
                        .map_err(e)?
                        .label(*name)
                        .legend(move |(px, py)| {
                            PathElement::new(vec![(px, py), (px + 20, py)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(e)?;
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(e)?;
            }};
        }
        match (x.log, y.log) {
            (false, false) => draw!(builder.build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)),
            (true, false) => {
                draw!(builder.build_cartesian_2d((xs.0..xs.1).log_scale(), ys.0..ys.1))
            }
            (false, true) => {
                draw!(builder.build_cartesian_2d(xs.0..xs.1, (ys.0..ys.1).log_scale()))
            }
            (true, true) => {
                draw!(builder.build_cartesian_2d((xs.0..xs.1).log_scale(), (ys.0..ys.1).log_scale()))
            }
        }
        root.present().map_err(e)?;
    }
    std::fs::write(path, svg).map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_is_an_svg_with_its_axis_labels_and_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        lines(
            &path,
            "t",
            Axis {
                label: "queue depth",
                log: true,
            },
            Axis {
                label: "IOPS",
                log: false,
            },
            &[Series {
                name: "a".into(),
                points: vec![(1.0, 10.0), (32.0, 100.0), (f64::NAN, 1.0)],
            }],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("queue depth") && svg.contains("IOPS"));
        assert!(svg.contains("<polyline"));
    }
}
